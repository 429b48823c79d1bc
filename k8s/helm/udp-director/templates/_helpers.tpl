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
