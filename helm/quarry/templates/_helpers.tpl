{{/* Name of the release's objects. */}}
{{- define "quarry.fullname" -}}
{{- if contains "quarry" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-quarry" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Common labels. */}}
{{- define "quarry.labels" -}}
app.kubernetes.io/name: quarry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels; call with (dict "root" $ "component" "coordinator"). */}}
{{- define "quarry.selectorLabels" -}}
app.kubernetes.io/name: quarry
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image by digest; call with the image values. */}}
{{- define "quarry.image" -}}
{{- printf "%s@%s" .repository .digest -}}
{{- end -}}

{{/* True ("true") when an image still has the all-zero placeholder digest. */}}
{{- define "quarry.placeholderDigest" -}}
{{- if eq .digest "sha256:0000000000000000000000000000000000000000000000000000000000000000" -}}true{{- end -}}
{{- end -}}

{{/* Service names. */}}
{{- define "quarry.clientService" -}}{{ include "quarry.fullname" . }}-client-api{{- end -}}
{{- define "quarry.meshService" -}}{{ include "quarry.fullname" . }}-mesh-api{{- end -}}
{{- define "quarry.metricsService" -}}{{ include "quarry.fullname" . }}-metrics{{- end -}}
{{- define "quarry.injectorService" -}}{{ include "quarry.fullname" . }}-injector{{- end -}}

{{/* Mesh API address the sidecars use. */}}
{{- define "quarry.meshAddr" -}}
{{- printf "%s.%s.svc.%s:%d" (include "quarry.meshService" .) .Release.Namespace .Values.injector.clusterDomain (int .Values.coordinator.ports.mesh) -}}
{{- end -}}

{{/* The coordinator's TLS names: every in-cluster name of both API services, plus extras. */}}
{{- define "quarry.coordinatorDnsNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $d := .Values.injector.clusterDomain -}}
{{- $names := list "localhost" -}}
{{- range $svc := list (include "quarry.clientService" .) (include "quarry.meshService" .) -}}
{{- $names = append $names $svc -}}
{{- $names = append $names (printf "%s.%s" $svc $ns) -}}
{{- $names = append $names (printf "%s.%s.svc" $svc $ns) -}}
{{- $names = append $names (printf "%s.%s.svc.%s" $svc $ns $d) -}}
{{- end -}}
{{- concat $names .Values.coordinator.dnsNames | join "," -}}
{{- end -}}

{{/* Hardened container security context. */}}
{{- define "quarry.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}
