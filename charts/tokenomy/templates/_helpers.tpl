{{/* Labels on every object: Kubernetes' recommended ones and Helm's. */}}
{{- define "tokenomy.labels" -}}
app.kubernetes.io/part-of: tokenomy
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The operator's selector: fixed, as the leader Service and the PodMonitor select it. */}}
{{- define "tokenomy.selector" -}}
app.kubernetes.io/name: tokenomy-operator
{{- end -}}

{{- define "tokenomy.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "tokenomy.sidecarImage" -}}
{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The ServiceAccount's subject, for every binding. */}}
{{- define "tokenomy.subject" -}}
- kind: ServiceAccount
  name: tokenomy-operator
  namespace: {{ .Release.Namespace }}
{{- end -}}

{{/* What the operator reads and writes in a watched namespace (all of them, cluster-wide). */}}
{{- define "tokenomy.namespacedRules" -}}
- apiGroups: ["tokenomy.dev"]
  resources: ["costpolicies", "modelroutes"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["tokenomy.dev"]
  resources: ["costpolicies/status", "modelroutes/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["pods", "services"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
