{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "textgen-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: `<release>-<chart>`, or the release name when it already contains the chart name. */}}
{{- define "textgen-operator.fullname" -}}
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

{{/* Chart label value: `<name>-<version>`. */}}
{{- define "textgen-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels common to every object of the release. */}}
{{- define "textgen-operator.labels" -}}
helm.sh/chart: {{ include "textgen-operator.chart" . }}
{{ include "textgen-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: textgen-operator
{{- end }}

{{/* Selector labels of the operator pod (stable across upgrades). */}}
{{- define "textgen-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "textgen-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "textgen-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "textgen-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "textgen-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespace the operator's namespaced RBAC lives in (the watched namespace). */}}
{{- define "textgen-operator.watchNamespace" -}}
{{- .Values.watchNamespace | default "" }}
{{- end }}

{{/* RBAC rules for the namespaced resources the operator manages (HACKING.md, Operator RBAC). */}}
{{- define "textgen-operator.namespacedRules" }}
  # Exactly what the operator calls; the chart README's "RBAC" table lists the same set and tests/chart checks it
  # against `kubectl auth can-i --list`.
  # TextGenServices: kopf watches them and patches its progress annotations; the status loop reads one by name.
  - apiGroups: ["textgen.dev"]
    resources: ["textgenservices"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: ["textgen.dev"]
    resources: ["textgenservices/status"]
    verbs: ["patch"]
  # The owner references on what the operator creates set blockOwnerDeletion, which the
  # OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift) allows only with this.
  - apiGroups: ["textgen.dev"]
    resources: ["textgenservices/finalizers"]
    verbs: ["update"]
  # RayServices: server-side apply (a patch; one that creates the object needs create too), drift repair reads
  # and watches them.
  - apiGroups: ["ray.io"]
    resources: ["rayservices"]
    verbs: ["get", "list", "watch", "create", "patch"]
  # A fixed-size TextGenService resizes its RayClusters' worker group (capacity.py: KubeRay does not).
  - apiGroups: ["ray.io"]
    resources: ["rayclusters"]
    verbs: ["get", "patch"]
  # The NetworkPolicy around each TextGenService's Ray pods (server-side apply; read for drift; deleted when
  # NetworkPolicies are switched off).
  - apiGroups: ["networking.k8s.io"]
    resources: ["networkpolicies"]
    verbs: ["get", "create", "patch", "delete"]
  # Pods of a pending Ray cluster, to report those that cannot be scheduled.
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["list"]
  # The Ray token Secret KubeRay makes per RayCluster (ray_auth.py), for Serve's REST API on the head.
  - apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get"]
  # Kubernetes Events about reconciliation (kopf posts them too).
  - apiGroups: [""]
    resources: ["events"]
    verbs: ["create"]
{{- end }}

{{/* RBAC rules for kopf's discovery (cluster-scoped, read-only): CRDs and namespaces coming and going. kopf
scans namespaces even when given exact names (unless its scanning is disabled); without these it retries, warns and
falls back to the names it was given. */}}
{{- define "textgen-operator.discoveryRules" }}
  # kopf's resource discovery: notice CRDs being added or removed at run time.
  - apiGroups: ["apiextensions.k8s.io"]
    resources: ["customresourcedefinitions"]
    verbs: ["list", "watch"]
  # kopf's namespace scanning: follow namespaces as they come and go.
  - apiGroups: [""]
    resources: ["namespaces"]
    verbs: ["list", "watch"]
{{- end }}

{{/* The operator's NetworkPolicy settings ($TEXTGEN_NETWORK_POLICY, read by networkpolicy.py), as JSON: the peers
admitted to Ray's control ports are the KubeRay operator, this operator's own pods (it polls Serve's REST API on
8265) and networkPolicy.controlPlaneFrom. */}}
{{- define "textgen-operator.networkPolicySettings" -}}
{{- $np := .Values.networkPolicy }}
{{- $kuberay := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" $np.kuberayOperator.namespace)) "podSelector" (dict "matchLabels" $np.kuberayOperator.podLabels) }}
{{- $self := dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace)) "podSelector" (dict "matchLabels" (include "textgen-operator.selectorLabels" . | fromYaml)) }}
{{- dict "enabled" $np.enabled "controlPlaneFrom" (concat (list $kuberay $self) $np.controlPlaneFrom) "serveFrom" $np.serveFrom | toJson }}
{{- end }}

{{/* KubeRay's Serve Service for a TextGenService: the operator names the RayService after the TextGenService
and KubeRay exposes it as `<rayservice>-serve-svc` (port 8000). The argument is the TextGenService name. */}}
{{- define "textgen-operator.serveServiceName" -}}
{{- printf "%s-serve-svc" . }}
{{- end }}

{{/* Rules the JSON schema cannot say clearly; each fails the render with a message that names the value. */}}
{{- define "textgen-operator.validate" -}}
{{- if eq (toString .Values.image.tag) "latest" }}
{{- fail "image.tag: `latest` is not allowed; pin a version (empty means the chart's appVersion)" }}
{{- end }}
{{- if eq (toString .Values.helmTest.image.tag) "latest" }}
{{- fail "helmTest.image.tag: `latest` is not allowed; pin a version" }}
{{- end }}
{{- $seen := dict }}
{{- range .Values.textGenServices }}
{{- $key := printf "%s/%s" (.namespace | default $.Release.Namespace) .name }}
{{- if hasKey $seen $key }}
{{- fail (printf "textGenServices: %q is listed twice; names must be unique per namespace" $key) }}
{{- end }}
{{- $_ := set $seen $key true }}
{{- if and $.Values.watchNamespace (ne (.namespace | default $.Release.Namespace) $.Values.watchNamespace) }}
{{- fail (printf "textGenServices: %q would not be seen by the operator, which watches only namespace %q (watchNamespace)" $key $.Values.watchNamespace) }}
{{- end }}
{{- end }}
{{- if and .Values.helmTest.service (not .Values.helmTest.enabled) }}
{{- fail "helmTest.service is set but helmTest.enabled is false" }}
{{- end }}
{{- end }}
