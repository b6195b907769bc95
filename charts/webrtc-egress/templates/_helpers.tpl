{{/* Chart name, overridable. */}}
{{- define "webrtc-egress.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: the release name, with the chart name appended unless the release
name already contains it. Kept short enough for the "-operator-metrics" suffix within 63.
*/}}
{{- define "webrtc-egress.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 46 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 46 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the operator's Deployment, Role(s), bindings and Lease default. */}}
{{- define "webrtc-egress.operatorName" -}}
{{- printf "%s-operator" (include "webrtc-egress.fullname" .) }}
{{- end }}

{{- define "webrtc-egress.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "webrtc-egress.labels" -}}
helm.sh/chart: {{ include "webrtc-egress.chart" . }}
app.kubernetes.io/name: {{ include "webrtc-egress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: webrtc-egress
{{- end }}

{{/*
Selector of the operator's pods. The component keeps them apart from the egress pods, which
the operator labels app.kubernetes.io/name=webrtc-egress as well.
*/}}
{{- define "webrtc-egress.selectorLabels" -}}
app.kubernetes.io/name: {{ include "webrtc-egress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "webrtc-egress.operatorLabels" -}}
{{ include "webrtc-egress.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "webrtc-egress.agentLabels" -}}
{{ include "webrtc-egress.labels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "webrtc-egress.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "webrtc-egress.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "webrtc-egress.leaseName" -}}
{{- default (include "webrtc-egress.operatorName" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* The operator's image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "webrtc-egress.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag | toString) }}
{{- end }}
{{- end }}

{{/* The egress pods' default image (`--agent-image`): the operator's unless agent.image says otherwise. */}}
{{- define "webrtc-egress.agentImage" -}}
{{- $agent := .Values.agent.image }}
{{- $repository := default .Values.image.repository $agent.repository }}
{{- if $agent.digest }}
{{- printf "%s@%s" $repository $agent.digest }}
{{- else if $agent.tag }}
{{- printf "%s:%s" $repository ($agent.tag | toString) }}
{{- else if not $agent.repository }}
{{- include "webrtc-egress.image" . }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Namespaces that get the agent ServiceAccount and RoleBinding: agent.namespaces plus the watched
namespace, each once, sorted.
*/}}
{{- define "webrtc-egress.agentNamespaces" -}}
{{- $namespaces := .Values.agent.namespaces | default list }}
{{- if .Values.operator.watchNamespace }}
{{- $namespaces = append $namespaces .Values.operator.watchNamespace }}
{{- end }}
{{- toJson ($namespaces | uniq | sortAlpha) }}
{{- end }}

{{/* Checks that span several values; the schema checks each value alone. */}}
{{- define "webrtc-egress.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail (printf "replicaCount is %d but operator.leaderElection.enabled is false: several replicas without a Lease would all reconcile and fight; enable leader election or use one replica" (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor scrapes the metrics Service" }}
{{- end }}
{{- end }}
