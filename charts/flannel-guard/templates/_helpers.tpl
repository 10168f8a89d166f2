{{/* The image reference: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "flannel-guard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Labels of every object but the TLS Secret, as manifests/base/kustomization.yaml adds them. */}}
{{- define "flannel-guard.partOf" -}}
app.kubernetes.io/part-of: flannel-guard
{{- end -}}

{{/* The webhooks' clientConfig. */}}
{{- define "flannel-guard.clientConfig" -}}
clientConfig:
  {{- if not .root.Values.certManager.enabled }}
  caBundle: {{ required "tls.ca (PEM) is required without certManager.enabled" .root.Values.tls.ca | b64enc }}
  {{- end }}
  service:
    name: flannel-guard
    namespace: {{ .root.Release.Namespace }}
    path: {{ .path }}
    port: 443
{{- end -}}

{{/* cert-manager's cainjector annotation. */}}
{{- define "flannel-guard.injectCA" -}}
{{- if .Values.certManager.enabled }}
  annotations:
    cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/flannel-guard-tls
{{- end }}
{{- end -}}
