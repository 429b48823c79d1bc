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
{{- end }}
