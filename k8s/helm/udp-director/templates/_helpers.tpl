{{/* Object name: the release name unless fullnameOverride is set. */}}
{{- define "udp-director.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride -}}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "udp-director.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The subset used to select the pods. */}}
{{- define "udp-director.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The Secret holding the sealed-token keys. */}}
{{- define "udp-director.keysSecret" -}}
{{- default (printf "%s-token-keys" (include "udp-director.fullname" .)) .Values.tokens.keys.existingSecret -}}
{{- end }}

{{/* Non-empty when a mapping under config.resourceQueryMapping has `allocate:` (Agones
allocation needs `create` on gameserverallocations). */}}
{{- define "udp-director.allocates" -}}
{{- range $name, $m := .Values.config.resourceQueryMapping }}
{{- if and (kindIs "map" $m) (hasKey $m "allocate") }}true{{ end }}
{{- end }}
{{- end }}

{{/* The port name of data port number `.` (0: data, then data-1, data-2, …). */}}
{{- define "udp-director.dataPortName" -}}
{{- if eq (int .) 0 }}data{{ else }}data-{{ . }}{{ end -}}
{{- end }}

{{/* Refuses settings that cannot work. */}}
{{- define "udp-director.validate" -}}
{{- $replicas := .Values.replicas | int -}}
{{- if .Values.autoscaling.enabled }}{{ $replicas = .Values.autoscaling.maxReplicas | int }}{{ end -}}
{{- if and (gt $replicas 1) (ne .Values.tokens.format "sealed") -}}
{{- fail (printf "replicas (or autoscaling.maxReplicas) = %d needs tokens.format: sealed: uuid tokens live in one replica's memory, so a query answered by one pod cannot be redeemed on another" $replicas) -}}
{{- end -}}
{{- if not (has .Values.tokens.format (list "sealed" "uuid")) -}}
{{- fail (printf "tokens.format must be sealed or uuid, not %q" .Values.tokens.format) -}}
{{- end -}}
{{- if and .Values.fastPath.enabled .Values.config.reusePort -}}
{{- fail "fastPath.enabled cannot be combined with config.reusePort: true (SPEC §8): the director refuses it at start" -}}
{{- end -}}
{{- if and .Values.service.split.enabled (ne .Values.service.type "LoadBalancer") -}}
{{- fail "service.split.enabled makes two LoadBalancer Services sharing one address: it needs service.type: LoadBalancer" -}}
{{- end -}}
{{- end }}

{{/* The director's config document (SPEC §5) as YAML: `config` from the values, with what
the chart manages set (tokenFormat, the key Secret, fastPath, adminTokenFile, queryAuth and
queryTls from their Secrets). Keys the
daemon may not know (fastPath, adminTokenFile) are written only when their value is set. */}}
{{- define "udp-director.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "tokenFormat" .Values.tokens.format }}
{{- if $config.dataPorts }}
{{- /* dataPorts replaces the one-port form (the values' default dataPort). */}}
{{- $_ := unset $config "dataPort" }}
{{- end }}
{{- if eq .Values.tokens.format "sealed" }}
{{- $_ := set $config "tokenKeysSecret" (printf "%s/%s" .Release.Namespace (include "udp-director.keysSecret" .)) }}
{{- $_ := set $config "tokenResumeSeconds" .Values.tokens.resumeSeconds }}
{{- end }}
{{- if .Values.fastPath.enabled }}
{{- $_ := set $config "fastPath" (dict "enabled" true "interfaces" .Values.fastPath.interfaces) }}
{{- end }}
{{- if .Values.admin.tokenSecret }}
{{- $_ := set $config "adminTokenFile" "/etc/udp-director/admin/token" }}
{{- end }}
{{- with .Values.queryAuth }}{{ if .jwksSecret }}
{{- $auth := dict "jwksFile" "/etc/udp-director/jwks/jwks.json" "audience" .audience "leewaySeconds" .leewaySeconds }}
{{- if .issuer }}{{ $_ := set $auth "issuer" .issuer }}{{ end }}
{{- $_ := set $config "queryAuth" $auth }}
{{- end }}{{ end }}
{{- with .Values.queryTls }}{{ if .secret }}
{{- $tls := dict "certFile" "/etc/udp-director/tls/tls.crt" "keyFile" "/etc/udp-director/tls/tls.key" }}
{{- if .clientCa }}{{ $_ := set $tls "clientCaFile" "/etc/udp-director/tls/ca.crt" }}{{ end }}
{{- $_ := set $config "queryTls" $tls }}
{{- end }}{{ end }}
{{- toYaml $config }}
{{- end }}

{{/* Config keys a running director cannot take over from a ConfigMap edit (the daemon's
config::reload::RESTART_ONLY, plus fastPath and the admin listener's keys; queryAuth and queryTls whole). Their values'
checksum is a pod annotation: changing one rolls the pods; any other edit applies live. */}}
{{- define "udp-director.restartChecksum" -}}
{{- $config := include "udp-director.config" . | fromYaml }}
{{- $picked := dict }}
{{- range $key := list "bindAddress" "queryPort" "dataPort" "dataPorts" "adminPort" "dataWorkers" "socketBufferBytes" "tokenFormat" "tokenKeysFile" "tokenKeysSecret" "reusePort" "fastPath" "adminBindAddress" "adminTokenFile" "queryAuth" "queryTls" }}
{{- if hasKey $config $key }}{{ $_ := set $picked $key (get $config $key) }}{{ end }}
{{- end }}
{{- if kindIs "map" $config.limits }}
{{- range $key := list "maxTokens" "ipv6PrefixLength" }}
{{- if hasKey $config.limits $key }}{{ $_ := set $picked (printf "limits.%s" $key) (get $config.limits $key) }}{{ end }}
{{- end }}
{{- end }}
{{- toJson $picked | sha256sum }}
{{- end }}

{{/* The mapping `helm test` queries: tests.resourceType, or the first mapping's name. */}}
{{- define "udp-director.testResourceType" -}}
{{- if .Values.tests.resourceType }}{{ .Values.tests.resourceType }}{{ else }}{{ keys .Values.config.resourceQueryMapping | sortAlpha | first }}{{ end -}}
{{- end }}

{{/* Labels of this release's `helm test` pod (the NetworkPolicy admits it to the admin
port); not the director's selector labels, so no Service or PDB selects it. */}}
{{- define "udp-director.testLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}

{{/* The tools image (sh + curl) of the hook Job and the test pod. */}}
{{- define "udp-director.toolsImage" -}}
{{ .Values.toolsImage.repository }}:{{ .Values.toolsImage.tag }}
{{- end }}

{{/* The restricted container securityContext every pod of this chart runs with. */}}
{{- define "udp-director.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
