{{/*
Labels of every object: the base's app.kubernetes.io/name and component (the
caller passes them), and Helm's standard ones in place of kustomize's
part-of/managed-by.
*/}}
{{- define "agenttest.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: agenttest
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/*
The operator's selector, as in the base: a Deployment's selector is immutable,
so keeping it lets a release take over a Deployment the base made.
*/}}
{{- define "agenttest.selectorLabels" -}}
app.kubernetes.io/name: agenttest-operator
app.kubernetes.io/component: operator
{{- end -}}

{{/* The subject every binding grants to: the operator's ServiceAccount. */}}
{{- define "agenttest.subjects" -}}
subjects:
  - kind: ServiceAccount
    name: agenttest-operator
    namespace: {{ .Release.Namespace }}
{{- end -}}

{{/*
The Lease the replicas elect through: settings.leader_lease if set, else
settings.py's default (the Role may update that one Lease only).
*/}}
{{- define "agenttest.leaseName" -}}
{{- .Values.settings.leader_lease | default "agenttest-operator" -}}
{{- end -}}

{{/*
One setting's value as its AGENTTEST_* variable reads it (settings._parse):
lists joined with commas; whole numbers without an exponent (values files
hold numbers as float64, which would print 52428800 as 5.24288e+07).
*/}}
{{- define "agenttest.settingValue" -}}
{{- if kindIs "slice" . -}}
{{- join "," . -}}
{{- else if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/*
The container's AGENTTEST_* variables: what the chart owns, then every key of
.Values.settings (values.schema.json allows settings.py's names only).
*/}}
{{- define "agenttest.settingsEnv" -}}
{{- $owned := dict
      "leader_election" "the chart always turns leader election on"
      "metrics_port" "set metrics.port"
      "health_port" "set health.port" -}}
{{- if eq .Values.rbac.scope "namespaced" -}}
{{- $_ := set $owned "namespaces" "with rbac.scope namespaced, set rbac.namespaces" -}}
{{- end -}}
{{- range $name, $value := .Values.settings -}}
{{- if hasKey $owned $name -}}
{{- fail (printf "settings.%s is set by the chart: %s" $name (get $owned $name)) -}}
{{- end -}}
{{- end -}}
{{- /* A variable set twice is refused by the API server only as a warning,
       and the last one wins: refuse it here, naming both places. */ -}}
{{- range .Values.extraEnv -}}
{{- $setting := lower (trimPrefix "AGENTTEST_" .name) -}}
{{- if and (hasPrefix "AGENTTEST_" .name) (or (hasKey $owned $setting) (hasKey $.Values.settings $setting)) -}}
{{- fail (printf "extraEnv %s is also set from settings or by the chart: set it in one place" .name) -}}
{{- end -}}
{{- if has .name (list "POD_NAME" "HOME") -}}
{{- fail (printf "extraEnv %s is set by the chart" .name) -}}
{{- end -}}
{{- end -}}
- name: AGENTTEST_LEADER_ELECTION
  value: "true"
- name: AGENTTEST_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
- name: AGENTTEST_HEALTH_PORT
  value: {{ .Values.health.port | quote }}
{{- if eq .Values.rbac.scope "namespaced" }}
- name: AGENTTEST_NAMESPACES
  value: {{ include "agenttest.watchedNamespaces" . | quote }}
{{- end }}
{{- range $name, $value := .Values.settings }}
{{- if not (kindIs "invalid" $value) }}
- name: AGENTTEST_{{ upper $name }}
  value: {{ include "agenttest.settingValue" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* rbac.namespaces, comma separated; the namespaced scope needs one at least. */}}
{{- define "agenttest.watchedNamespaces" -}}
{{- if not .Values.rbac.namespaces -}}
{{- fail "rbac.scope namespaced needs rbac.namespaces: the namespaces the operator watches and may act in" -}}
{{- end -}}
{{- join "," .Values.rbac.namespaces -}}
{{- end -}}
