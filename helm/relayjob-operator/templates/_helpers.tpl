{{/* Names, labels and the derived settings shared by the templates. */}}

{{- define "relayjob.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "relayjob.fullname" -}}
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

{{- define "relayjob.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "relayjob.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relayjob.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "relayjob.labels" -}}
helm.sh/chart: {{ include "relayjob.chart" . }}
{{ include "relayjob.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: relayjob-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "relayjob.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "relayjob.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "relayjob.peeringName" -}}
{{- default (include "relayjob.fullname" .) .Values.peeringName }}
{{- end }}

{{/* The ValidatingAdmissionPolicy on Secret references, and its binding: one name for both. */}}
{{- define "relayjob.secretPolicyName" -}}
{{ include "relayjob.fullname" . }}-secret-references
{{- end }}

{{- define "relayjob.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The namespaces the operator serves, as a list: empty for cluster scope (meaning all), else
watchNamespaces or the release namespace. Returned as JSON because templates can only return strings.
*/}}
{{- define "relayjob.watchNamespaces" -}}
{{- if eq .Values.scope "namespaced" }}
{{- if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- else }}
{{- list | toJson }}
{{- end }}
{{- end }}

{{/* The Secret and key the operator reads each URL from: the user's, or the bundled server's. */}}
{{- define "relayjob.redisSecret" -}}
{{- if .Values.redis.bundled.enabled }}{{ include "relayjob.fullname" . }}-redis{{ else }}{{ .Values.redis.existingSecret }}{{ end }}
{{- end }}
{{- define "relayjob.redisSecretKey" -}}
{{- if .Values.redis.bundled.enabled }}url{{ else }}{{ .Values.redis.existingSecretKey }}{{ end }}
{{- end }}
{{- define "relayjob.postgresqlSecret" -}}
{{- if .Values.postgresql.bundled.enabled }}{{ include "relayjob.fullname" . }}-postgresql{{ else }}{{ .Values.postgresql.existingSecret }}{{ end }}
{{- end }}
{{- define "relayjob.postgresqlSecretKey" -}}
{{- if .Values.postgresql.bundled.enabled }}url{{ else }}{{ .Values.postgresql.existingSecretKey }}{{ end }}
{{- end }}

{{/* Where the CA file of "redis" or "postgresql" is mounted. */}}
{{- define "relayjob.caDir" -}}
/etc/relayjob/{{ . }}-ca
{{- end }}

{{/*
The query parameters the chart adds to the Redis URL of the Secret: the password of
redis.passwordSecret and the CA of redis.tls.caSecret (redis-py reads both from the URL); empty
when neither is set, and the URL is then the Secret's, untouched.
*/}}
{{- define "relayjob.redisUrlParams" -}}
{{- $params := list }}
{{- if .Values.redis.passwordSecret.name }}
{{- $params = append $params "password=$(CHART_REDIS_PASSWORD)" }}
{{- end }}
{{- with .Values.redis.tls.caSecret }}
{{- if .name }}
{{- $params = append $params (printf "ssl_ca_certs=%s/%s" (include "relayjob.caDir" "redis") .key) }}
{{- end }}
{{- end }}
{{- join "&" $params }}
{{- end }}

{{/*
A password kept across upgrades: the one already in the release's Secret when there is one, else a
new random one. `lookup` returns nothing under `helm template`, which then renders a fresh value.
*/}}
{{- define "relayjob.keptPassword" -}}
{{- $secret := lookup "v1" "Secret" .namespace .name }}
{{- if and $secret $secret.data (hasKey $secret.data "password") }}
{{- index $secret.data "password" | b64dec }}
{{- else }}
{{- randAlphaNum 32 }}
{{- end }}
{{- end }}

{{/* Cross-field rules the JSON schema cannot state with a readable message. */}}
{{- define "relayjob.validate" -}}
{{- if and (eq .Values.scope "cluster") .Values.watchNamespaces }}
{{- fail (printf "watchNamespaces %v is only used with scope: namespaced; with scope: cluster the operator serves every namespace. Set scope: namespaced, or remove watchNamespaces." .Values.watchNamespaces) }}
{{- end }}
{{- if and (not .Values.redis.bundled.enabled) (not .Values.redis.existingSecret) }}
{{- fail "redis.existingSecret is empty: name the Secret holding the Redis URL, or set redis.bundled.enabled=true for an evaluation Redis." }}
{{- end }}
{{- if and (not .Values.postgresql.bundled.enabled) (not .Values.postgresql.existingSecret) }}
{{- fail "postgresql.existingSecret is empty: name the Secret holding the PostgreSQL URL, or set postgresql.bundled.enabled=true for an evaluation PostgreSQL." }}
{{- end }}
{{- end }}
