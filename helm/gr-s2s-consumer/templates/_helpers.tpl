{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "gr-s2s-consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release-chart, or the release name alone when it already contains
the chart name; truncated to 63 characters.
*/}}
{{- define "gr-s2s-consumer.fullname" -}}
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

{{/*
A name derived from the full name with a suffix, kept within 63 characters.
Usage: include "gr-s2s-consumer.suffixed" (list . "api")
*/}}
{{- define "gr-s2s-consumer.suffixed" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "gr-s2s-consumer.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- define "gr-s2s-consumer.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gr-s2s-consumer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels, on every resource.
*/}}
{{- define "gr-s2s-consumer.labels" -}}
helm.sh/chart: {{ include "gr-s2s-consumer.chart" . }}
{{ include "gr-s2s-consumer.selectorLabels" . }}
app.kubernetes.io/version: {{ (default .Chart.AppVersion .Values.image.tag) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gr-s2s-consumer
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels. A Deployment's selector is immutable: these never change
between chart versions and never include the version or user labels.
*/}}
{{- define "gr-s2s-consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gr-s2s-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: consumer
{{- end }}

{{- define "gr-s2s-consumer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gr-s2s-consumer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference: repository[:tag][@digest]; the tag defaults to appVersion.
*/}}
{{- define "gr-s2s-consumer.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- Secrets */}}

{{/* Name of the Secret holding the API key, and the key inside it. */}}
{{- define "gr-s2s-consumer.apiKeySecretName" -}}
{{- if .Values.api.existingSecret }}
{{- .Values.api.existingSecret }}
{{- else }}
{{- include "gr-s2s-consumer.suffixed" (list . "api") }}
{{- end }}
{{- end }}

{{- define "gr-s2s-consumer.apiKeySecretKey" -}}
{{- if .Values.api.existingSecret }}
{{- .Values.api.existingSecretKey }}
{{- else }}
{{- "api-key" }}
{{- end }}
{{- end }}

{{/* True ("true") when the chart creates the API key Secret. */}}
{{- define "gr-s2s-consumer.createApiKeySecret" -}}
{{- if and (not .Values.api.existingSecret) .Values.api.key }}true{{ end }}
{{- end }}

{{- define "gr-s2s-consumer.kafkaSecretName" -}}
{{- if .Values.kafka.sasl.existingSecret }}
{{- .Values.kafka.sasl.existingSecret }}
{{- else }}
{{- include "gr-s2s-consumer.suffixed" (list . "kafka") }}
{{- end }}
{{- end }}

{{- define "gr-s2s-consumer.createKafkaSecret" -}}
{{- if and .Values.kafka.sasl.enabled (not .Values.kafka.sasl.existingSecret) }}true{{ end }}
{{- end }}

{{/* Where the Secrets are mounted in the container. */}}
{{- define "gr-s2s-consumer.apiKeyDir" -}}/var/run/secrets/gr-s2s-consumer/api{{- end }}
{{- define "gr-s2s-consumer.apiKeyFile" -}}{{ include "gr-s2s-consumer.apiKeyDir" . }}/api-key{{- end }}
{{- define "gr-s2s-consumer.kafkaCaDir" -}}/var/run/secrets/gr-s2s-consumer/kafka-ca{{- end }}
{{- define "gr-s2s-consumer.kafkaCaFile" -}}{{ include "gr-s2s-consumer.kafkaCaDir" . }}/ca.crt{{- end }}
{{- define "gr-s2s-consumer.kafkaClientDir" -}}/var/run/secrets/gr-s2s-consumer/kafka-client{{- end }}
{{- define "gr-s2s-consumer.kafkaSaslDir" -}}/var/run/secrets/gr-s2s-consumer/kafka-sasl{{- end }}
{{- define "gr-s2s-consumer.kafkaSaslPasswordFile" -}}{{ include "gr-s2s-consumer.kafkaSaslDir" . }}/password{{- end }}

{{/* ------------------------------------------------------ Kafka properties */}}

{{/*
librdkafka properties as a dict: what kafka.sasl / kafka.tls imply, then
kafka.config over it (the user's word wins). Secrets never go through here.
Returned as YAML; use with fromYaml.
*/}}
{{- define "gr-s2s-consumer.kafkaProperties" -}}
{{- $props := dict }}
{{- if and .Values.kafka.sasl.enabled .Values.kafka.tls.enabled }}
{{- $_ := set $props "security.protocol" "SASL_SSL" }}
{{- else if .Values.kafka.sasl.enabled }}
{{- $_ := set $props "security.protocol" "SASL_PLAINTEXT" }}
{{- else if .Values.kafka.tls.enabled }}
{{- $_ := set $props "security.protocol" "SSL" }}
{{- end }}
{{- if .Values.kafka.sasl.enabled }}
{{- $_ := set $props "sasl.mechanism" .Values.kafka.sasl.mechanism }}
{{- if eq .Values.kafka.sasl.mechanism "OAUTHBEARER" }}
{{- $o := .Values.kafka.sasl.oauthbearer }}
{{- $_ := set $props "sasl.oauthbearer.method" "oidc" }}
{{- $_ := set $props "sasl.oauthbearer.token.endpoint.url" $o.tokenEndpointUrl }}
{{- with $o.scopes }}
{{- $_ := set $props "sasl.oauthbearer.scope" (join " " .) }}
{{- end }}
{{- with $o.extensions }}
{{- $pairs := list }}
{{- range $k, $v := . }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- $_ := set $props "sasl.oauthbearer.extensions" (join "," $pairs) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caSecret }}
{{- $_ := set $props "ssl.ca.location" (include "gr-s2s-consumer.kafkaCaFile" .) }}
{{- end }}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.clientCertSecret }}
{{- $dir := include "gr-s2s-consumer.kafkaClientDir" . }}
{{- $_ := set $props "ssl.certificate.location" (printf "%s/tls.crt" $dir) }}
{{- $_ := set $props "ssl.key.location" (printf "%s/tls.key" $dir) }}
{{- end }}
{{- range $k, $v := .Values.kafka.config }}
{{- /* YAML numbers arrive as float64: keep whole numbers whole (no 1e+07). */}}
{{- if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- $_ := set $props $k (printf "%d" (int64 $v)) }}
{{- else }}
{{- $_ := set $props $k (toString $v) }}
{{- end }}
{{- end }}
{{- toYaml $props }}
{{- end }}

{{/* The contract's mapping: security.protocol -> KAFKA_SECURITY_PROTOCOL. */}}
{{- define "gr-s2s-consumer.kafkaEnvName" -}}
{{- printf "KAFKA_%s" (. | upper | replace "." "_") }}
{{- end }}

{{/*
The SASL mechanism the workers use: kafka.sasl.mechanism, or the one
kafka.config sets (it wins, as it does for the workers). Empty without SASL.
*/}}
{{- define "gr-s2s-consumer.saslMechanism" -}}
{{- $props := include "gr-s2s-consumer.kafkaProperties" . | fromYaml }}
{{- $m := index $props "sasl.mechanism" | default (index $props "sasl.mechanisms") | default "" }}
{{- $protocol := index $props "security.protocol" | default "" | upper }}
{{- if hasPrefix "SASL_" $protocol }}{{ $m | upper }}{{ end }}
{{- end }}

{{/* KEDA's spelling of the SASL mechanism (its kafka scaler's `sasl`). */}}
{{- define "gr-s2s-consumer.kedaSasl" -}}
{{- $m := include "gr-s2s-consumer.saslMechanism" . }}
{{- if eq $m "PLAIN" }}plaintext
{{- else if eq $m "SCRAM-SHA-256" }}scram_sha256
{{- else if eq $m "SCRAM-SHA-512" }}scram_sha512
{{- else if eq $m "OAUTHBEARER" }}oauthbearer
{{- end }}
{{- end }}

{{/* True ("true") when the chart's own SASL settings use OAUTHBEARER (OIDC client credentials). */}}
{{- define "gr-s2s-consumer.oauthbearer" -}}
{{- if and .Values.kafka.sasl.enabled (eq .Values.kafka.sasl.mechanism "OAUTHBEARER") }}true{{ end }}
{{- end }}

{{/* The topic KEDA measures lag on: explicit, or the single plain topic. */}}
{{- define "gr-s2s-consumer.kedaTopic" -}}
{{- if .Values.autoscaling.keda.topic }}
{{- .Values.autoscaling.keda.topic }}
{{- else if and (eq (len .Values.kafka.topics) 1) (not (hasPrefix "^" (first .Values.kafka.topics))) }}
{{- first .Values.kafka.topics }}
{{- end }}
{{- end }}

{{/* ----------------------------------------------------- Derived numbers */}}

{{- define "gr-s2s-consumer.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add (int .Values.shutdownTimeoutSeconds) (int .Values.terminationGraceMarginSeconds) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
The most workers the API key's request budget can feed:
ceil(requestsPerMinute * batch.maxEvents / 60 / workerEventsPerSecond).
1,000 requests a minute at 100 events a request is 1,667 events/s: one worker
at 2,000 events/s. Empty when no budget is configured.
*/}}
{{- define "gr-s2s-consumer.budgetReplicas" -}}
{{- $b := .Values.autoscaling.budget }}
{{- if not (kindIs "invalid" $b.requestsPerMinute) }}
{{- $eventsPerSecond := divf (mulf $b.requestsPerMinute .Values.batch.maxEvents) 60 }}
{{- ceil (divf $eventsPerSecond $b.workerEventsPerSecond) | int }}
{{- end }}
{{- end }}

{{/*
The most workers the budget allows: what it can feed, but never fewer than
minReplicas. minReplicas is availability (a second worker to take over the
partitions when one stops); workers on one key share its budget, each pacing
itself to its share, so the floor costs no requests. Empty without a budget.
*/}}
{{- define "gr-s2s-consumer.budgetMax" -}}
{{- $budget := include "gr-s2s-consumer.budgetReplicas" . }}
{{- if $budget }}
{{- max (int $budget) (int .Values.autoscaling.minReplicas) }}
{{- end }}
{{- end }}

{{/* The autoscaler's maximum: explicit, else the partitions capped by the budget. */}}
{{- define "gr-s2s-consumer.maxReplicas" -}}
{{- if kindIs "invalid" .Values.autoscaling.maxReplicas }}
{{- $budget := include "gr-s2s-consumer.budgetMax" . }}
{{- if $budget }}
{{- min (int .Values.kafka.partitions) (int $budget) }}
{{- else }}
{{- int .Values.kafka.partitions }}
{{- end }}
{{- else }}
{{- int .Values.autoscaling.maxReplicas }}
{{- end }}
{{- end }}

{{/* ------------------------------------------------------------ Validation */}}

{{/*
Rules a JSON schema cannot state (they relate two values, or need the
template's view). Included by the Deployment so every render runs them.
*/}}
{{- define "gr-s2s-consumer.validate" -}}
{{- $p := "gr-s2s-consumer" }}
{{- if not .Values.kafka.bootstrapServers }}
{{- fail (printf "%s: kafka.bootstrapServers is required (comma-separated host:port list)" $p) }}
{{- end }}
{{- if and (not .Values.api.existingSecret) (not .Values.api.key) }}
{{- fail (printf "%s: set api.existingSecret (a Secret holding the key under api.existingSecretKey) or api.key; the key is never taken from anywhere else" $p) }}
{{- end }}
{{- if and .Values.kafka.sasl.enabled (not .Values.kafka.sasl.existingSecret) (or (not .Values.kafka.sasl.username) (not .Values.kafka.sasl.password)) }}
{{- fail (printf "%s: kafka.sasl.enabled needs kafka.sasl.existingSecret, or both kafka.sasl.username and kafka.sasl.password" $p) }}
{{- end }}
{{- $grace := int (include "gr-s2s-consumer.terminationGracePeriodSeconds" .) }}
{{- if le $grace (int .Values.shutdownTimeoutSeconds) }}
{{- fail (printf "%s: terminationGracePeriodSeconds (%d) must be greater than shutdownTimeoutSeconds (%d), or Kubernetes kills the worker before it has drained and committed" $p $grace (int .Values.shutdownTimeoutSeconds)) }}
{{- end }}
{{- range $k, $v := .Values.kafka.config }}
{{- $lk := lower $k }}
{{- if or (contains "password" $lk) (contains "secret" $lk) (contains "private.key" $lk) (contains "key.pem" $lk) (contains "sasl.jaas" $lk) (eq $lk "sasl.username") (eq $lk "sasl.oauthbearer.config") }}
{{- fail (printf "%s: kafka.config.%s looks like a credential; it would land in a ConfigMap. Use kafka.sasl.existingSecret (or extraEnv with valueFrom.secretKeyRef)" $p $k) }}
{{- end }}
{{- end }}
{{- $mechanism := include "gr-s2s-consumer.saslMechanism" . }}
{{- if and $mechanism (not (has $mechanism (list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512" "OAUTHBEARER"))) }}
{{- fail (printf "%s: SASL mechanism %s is not supported: the worker's librdkafka (the confluent-kafka wheel) is built with PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER only (no GSSAPI/Kerberos)" $p $mechanism) }}
{{- end }}
{{- if and (include "gr-s2s-consumer.oauthbearer" .) (not .Values.kafka.sasl.oauthbearer.tokenEndpointUrl) }}
{{- fail (printf "%s: kafka.sasl.mechanism OAUTHBEARER needs kafka.sasl.oauthbearer.tokenEndpointUrl (the OIDC token endpoint); the Secret's username and password are the client id and secret" $p) }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if and (eq .name "GR_API_KEY") (hasKey . "value") }}
{{- fail (printf "%s: extraEnv must not set GR_API_KEY as a plain value; use api.existingSecret (mounted as GR_API_KEY_FILE)" $p) }}
{{- end }}
{{- end }}
{{- $mode := .Values.autoscaling.mode }}
{{- if not (kindIs "invalid" .Values.kafka.partitions) }}
{{- if and (eq $mode "none") (gt (int .Values.replicaCount) (int .Values.kafka.partitions)) }}
{{- fail (printf "%s: replicaCount (%d) exceeds kafka.partitions (%d): the extra workers would sit idle" $p (int .Values.replicaCount) (int .Values.kafka.partitions)) }}
{{- end }}
{{- end }}
{{- if ne $mode "none" }}
{{- if kindIs "invalid" .Values.kafka.partitions }}
{{- fail (printf "%s: autoscaling.mode=%s needs kafka.partitions (the total partition count of the consumed topics), which caps maxReplicas" $p $mode) }}
{{- end }}
{{- $max := int (include "gr-s2s-consumer.maxReplicas" .) }}
{{- $min := int .Values.autoscaling.minReplicas }}
{{- if gt $max (int .Values.kafka.partitions) }}
{{- fail (printf "%s: autoscaling.maxReplicas (%d) must not exceed kafka.partitions (%d): workers beyond the partition count sit idle" $p $max (int .Values.kafka.partitions)) }}
{{- end }}
{{- $budget := include "gr-s2s-consumer.budgetReplicas" . }}
{{- $budgetMax := include "gr-s2s-consumer.budgetMax" . }}
{{- if and $budgetMax (gt $max (int $budgetMax)) }}
{{- fail (printf "%s: autoscaling.maxReplicas (%d) is above what the API key's budget can feed: ceil(%v requests/min * %d events / 60 / %v events/s per worker) = %s workers (and minReplicas, %d, is the floor); more only make 429s. Raise autoscaling.budget.requestsPerMinute (or workerEventsPerSecond), or set it to null to lift the cap" $p $max .Values.autoscaling.budget.requestsPerMinute (int .Values.batch.maxEvents) .Values.autoscaling.budget.workerEventsPerSecond $budget $min) }}
{{- end }}
{{- if gt $min (int .Values.kafka.partitions) }}
{{- fail (printf "%s: autoscaling.minReplicas (%d) exceeds kafka.partitions (%d): the extra workers would sit idle" $p $min (int .Values.kafka.partitions)) }}
{{- end }}
{{- if gt $min $max }}
{{- fail (printf "%s: autoscaling.minReplicas (%d) is greater than maxReplicas (%d)" $p $min $max) }}
{{- end }}
{{- if and (eq $min 0) (eq $mode "hpa") }}
{{- fail (printf "%s: autoscaling.minReplicas 0 needs autoscaling.mode=keda; an HPA keeps at least 1" $p) }}
{{- end }}
{{- if eq $mode "keda" }}
{{- $topic := include "gr-s2s-consumer.kedaTopic" . }}
{{- if and (eq $min 0) (not $topic) }}
{{- fail (printf "%s: autoscaling.minReplicas 0 with no topic to measure: a group that never committed would stay at zero. Set autoscaling.keda.topic or minReplicas >= 1" $p) }}
{{- end }}
{{- if and .Values.autoscaling.keda.limitToPartitionsWithLag (not $topic) }}
{{- fail (printf "%s: autoscaling.keda.limitToPartitionsWithLag needs a topic (autoscaling.keda.topic, or a single plain kafka.topics entry)" $p) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
