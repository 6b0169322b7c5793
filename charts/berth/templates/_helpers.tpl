{{/*
Names. berth is installed once per cluster: its service accounts
(berth-manager, berth-node-agent) are the identities the webhooks authorize,
its webhook configurations are berth-validating and berth-mutating, so the
objects carry fixed names rather than release-prefixed ones.
*/}}

{{- define "berth.labels" -}}
app.kubernetes.io/part-of: berth
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "berth.managerSelector" -}}
app.kubernetes.io/name: berth-manager
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "berth.nodeAgentSelector" -}}
app.kubernetes.io/name: berth-node-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "berth.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The webhook Service and the names its serving certificate must carry. */}}
{{- define "berth.webhookService" -}}berth-webhooks{{- end -}}
{{- define "berth.webhookCertSecret" -}}berth-webhook-cert{{- end -}}
{{- define "berth.webhookDNSNames" -}}
- {{ include "berth.webhookService" . }}.{{ .Release.Namespace }}.svc
- {{ include "berth.webhookService" . }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end -}}

{{/*
The rules of one Role or ClusterRole from files/rbac/<file>, a copy of
config/rbac/<file> (`make chart-sync`; `make chart-check` fails if it is
stale): config/rbac is the one source of berth's RBAC.
Call with (list $ "manager.yaml" "ClusterRole").
*/}}
{{- define "berth.rules" -}}
{{- $root := index . 0 -}}
{{- $file := printf "files/rbac/%s" (index . 1) -}}
{{- $kind := index . 2 -}}
{{- $found := false -}}
{{- range splitList "\n---\n" ($root.Files.Get $file) -}}
{{- $object := fromYaml . -}}
{{- if eq (get $object "kind") $kind -}}
{{- $found = true -}}
{{- toYaml (get $object "rules") -}}
{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "%s has no %s (run make chart-sync)" $file $kind) -}}
{{- end -}}
{{- end -}}

{{/* Fails on value combinations the schema cannot express. */}}
{{- define "berth.validate" -}}
{{- if and (eq .Values.webhook.certificates "self-generated") (gt (int .Values.manager.replicas) 1) (not .Values.local) -}}
{{- fail (printf "webhook.certificates=self-generated needs manager.replicas=1 (got %d): each replica would present its own CA behind one Service; use webhook.certificates=helm or cert-manager for more replicas" (int .Values.manager.replicas)) -}}
{{- end -}}
{{- if and (gt (int .Values.manager.replicas) 1) (not .Values.manager.leaderElection.enabled) -}}
{{- fail (printf "manager.replicas=%d needs manager.leaderElection.enabled=true: two leaders would both write" (int .Values.manager.replicas)) -}}
{{- end -}}
{{- end -}}
