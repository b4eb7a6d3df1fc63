{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "vpp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; object names append "-<component>". */}}
{{- define "vpp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vpp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every object of the release. */}}
{{- define "vpp.labels" -}}
helm.sh/chart: {{ include "vpp.chart" . }}
app.kubernetes.io/name: {{ include "vpp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vpp
{{- end }}

{{/*
Helpers below take a component context: (dict "root" $ "name" <component key> "c" <component values>).
*/}}

{{- define "vpp.component.fullname" -}}
{{- printf "%s-%s" (include "vpp.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vpp.component.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vpp.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{- define "vpp.component.labels" -}}
{{ include "vpp.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- with .c.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "vpp.component.image" -}}
{{- $img := .c.image | default dict }}
{{- $repo := $img.repository | default .root.Values.image.repository }}
{{- $tag := $img.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- printf "%s:%s" $repo (toString $tag) }}
{{- end }}

{{- define "vpp.component.grpcPort" -}}
{{- (.c.ports | default dict).grpc | default .root.Values.ports.grpc }}
{{- end }}

{{- define "vpp.component.metricsPort" -}}
{{- (.c.ports | default dict).metrics | default .root.Values.ports.metrics }}
{{- end }}

{{/* True ("true") when the metrics port rides on the component's main Service. */}}
{{- define "vpp.component.metricsOnMainService" -}}
{{- if eq ((.c.service | default dict).type | default "ClusterIP") "ClusterIP" }}true{{ end }}
{{- end }}
