{{- define "taskd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "taskd.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "taskd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "taskd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "taskd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "taskd.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Whether the Prometheus Operator objects may be rendered. */}}
{{- define "taskd.monitoringApi" -}}
{{- if or (not .Values.monitoring.requireCRDs) (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- end -}}

{{/* Whether taskd's metrics are scraped (then the endpoint listens on the node address with a token). */}}
{{- define "taskd.scraped" -}}
{{- if and (include "taskd.monitoringApi" .) (or .Values.monitoring.podMonitor.enabled .Values.monitoring.serviceMonitor.enabled) -}}true{{- end -}}
{{- end -}}

{{- define "taskd.metricsAddress" -}}
{{- if include "taskd.scraped" . -}}
{{- printf "0.0.0.0:%d" (int .Values.config.metrics.port) -}}
{{- else -}}
{{- .Values.config.metrics.address -}}
{{- end -}}
{{- end -}}

{{/* The agent's arguments shared by install, status and uninstall. */}}
{{- define "taskd.agentArgs" -}}
- --host-root={{ .Values.agent.hostRoot }}
- --systemctl={{ .Values.agent.systemctl }}
- --kubelet-config={{ .Values.agent.kubeletConfig }}
{{- end -}}

{{/* Checks across values the schema cannot express. */}}
{{- define "taskd.validate" -}}
{{- if not (hasKey .Values.config.runtimes .Values.config.defaultRuntime) -}}
{{- fail (printf "config.defaultRuntime %q is not one of config.runtimes" .Values.config.defaultRuntime) -}}
{{- end -}}
{{- range .Values.runtimeClasses -}}
{{- if not (hasKey $.Values.config.runtimes .handler) -}}
{{- fail (printf "runtimeClasses: %s has handler %q, which is not one of config.runtimes" .name .handler) -}}
{{- end -}}
{{- end -}}
{{- end -}}
