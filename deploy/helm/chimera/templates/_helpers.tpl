{{/* The release's full name: the release name, with the chart's unless it already has it. */}}
{{- define "chimera.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chimera.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chimera.labels" -}}
{{ include "chimera.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "chimera.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "chimera.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "chimera.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Refuses value combinations the schema cannot express; every template includes it, so
`helm template`, `lint`, `install` and `upgrade` all stop with the reason.
*/}}
{{- define "chimera.validate" -}}
{{- if and (eq .Values.database.kind "sqlite") (gt (int .Values.replicas) 1) -}}
{{- fail (printf "replicas: %d with database.kind sqlite: SQLite mode runs one replica (the service locks the database file); use database.kind postgres for more" (int .Values.replicas)) -}}
{{- end -}}
{{- if and .Values.oidcCaConfigMap.name (not .Values.config.oidc) -}}
{{- fail "oidcCaConfigMap: set, but config.oidc is not: the CA bundle is for the OIDC provider" -}}
{{- end -}}
{{- end -}}

{{/* Where the chart mounts what serve.yaml names: one read-only projected volume. */}}
{{- define "chimera.configDir" -}}/etc/chimera{{- end -}}
{{/* The writable volume: the SQLite file and the state directory. */}}
{{- define "chimera.dataDir" -}}/var/lib/chimera{{- end -}}

{{/* serve.yaml, as a dict: the chart's keys (paths of what it mounts) and `config`. */}}
{{- define "chimera.serveConfig" -}}
{{- $etc := include "chimera.configDir" . -}}
{{- $data := include "chimera.dataDir" . -}}
{{- $c := deepCopy .Values.config -}}
{{- $_ := set $c "listen" "0.0.0.0:8080" -}}
{{- $_ := set $c "state" (printf "%s/state" $data) -}}
{{- $_ := set $c "registry" (printf "%s/registry/devices.json" $etc) -}}
{{- if eq .Values.database.kind "sqlite" -}}
{{- $_ := set $c "database" (printf "%s/chimera.db" $data) -}}
{{- else -}}
{{- $pg := .Values.database.postgres -}}
{{- $db := dict "url_file" (printf "%s/database/url" $etc) "pool_size" (int $pg.poolSize) -}}
{{- if $pg.passwordSecret.name -}}
{{- $_ := set $db "password_file" (printf "%s/database/password" $etc) -}}
{{- end -}}
{{- if $pg.caConfigMap.name -}}
{{- $_ := set $db "ca_file" (printf "%s/database/ca.crt" $etc) -}}
{{- end -}}
{{- $_ := set $c "database" $db -}}
{{- end -}}
{{- if .Values.tokens.secretName -}}
{{- $_ := set $c "tokens" (printf "%s/tokens/tokens.yaml" $etc) -}}
{{- end -}}
{{- if .Values.trust.configMap -}}
{{- $_ := set $c "trust_metadata" (printf "%s/trust/%s" $etc .Values.trust.metadataKey) -}}
{{- $roots := list -}}
{{- range .Values.trust.rootKeys -}}
{{- $roots = append $roots (printf "%s/trust/%s" $etc .) -}}
{{- end -}}
{{- $_ := set $c "trust_roots" $roots -}}
{{- end -}}
{{- if .Values.oidcCaConfigMap.name -}}
{{- $_ := set $c.oidc "ca_file" (printf "%s/oidc/ca.crt" $etc) -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}
