{{/* Chart name, truncated to fit label values. */}}
{{- define "gpupool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<chart>, or <release> when it already contains the chart name. */}}
{{- define "gpupool.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "gpupool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "gpupool.labels" -}}
helm.sh/chart: {{ include "gpupool.chart" . }}
app.kubernetes.io/name: {{ include "gpupool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gpupool
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; call with (dict "ctx" $ "component" "operator"). */}}
{{- define "gpupool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpupool.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gpupool.operator.fullname" -}}
{{- printf "%s-operator" (include "gpupool.fullname" .) }}
{{- end }}

{{- define "gpupool.agent.fullname" -}}
{{- printf "%s-agent" (include "gpupool.fullname" .) }}
{{- end }}

{{- define "gpupool.operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpupool.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gpupool.agent.serviceAccountName" -}}
{{- default (include "gpupool.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- end }}

{{- define "gpupool.hubAccess.serviceAccountName" -}}
{{- default (printf "%s-hub" (include "gpupool.fullname" .)) .Values.member.hubAccess.serviceAccountName }}
{{- end }}

{{/* image reference; call with (dict "image" .Values.x.image "ctx" $). */}}
{{- define "gpupool.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}
{{- end }}

{{/* Path the oracle keypair is mounted at. */}}
{{- define "gpupool.oracleKeypairPath" -}}
/var/run/secrets/gpupool/oracle/{{ .Values.solana.oracleKeypair.key }}
{{- end }}

{{/* Cross-field checks the schema cannot express with a clear message. */}}
{{- define "gpupool.validate" -}}
{{- if and (eq .Values.mode "hub") (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicas > 1 requires operator.leaderElection.enabled=true (otherwise several operators would act at once)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled requires metrics.service.enabled" }}
{{- end }}
{{- if and (eq .Values.mode "member") .Values.agent.enabled (eq .Values.agent.nvml.access "none") (not .Values.agent.topologyFile) }}
{{- fail "agent.nvml.access=none requires agent.topologyFile" }}
{{- end }}
{{- end }}
