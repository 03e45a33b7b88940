{{/*
Names and labels.
*/}}
{{- define "itb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "itb.fullname" -}}
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

{{- define "itb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "itb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "itb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "itb.labels" -}}
helm.sh/chart: {{ include "itb.chart" . }}
{{ include "itb.selectorLabels" . }}
app.kubernetes.io/version: {{ include "itb.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/component: token-broker
app.kubernetes.io/part-of: intellia
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "itb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "itb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "itb.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "itb.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "itb.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
Fixed paths and ports, shared with the Dockerfile and DESIGN.md §3.
*/}}
{{- define "itb.configDir" -}}/etc/intellia-token-broker{{- end }}
{{- define "itb.apiKeyDir" -}}/var/run/secrets/intellia{{- end }}
{{- define "itb.brokerSecretsDir" -}}/var/run/secrets/broker{{- end }}
{{- define "itb.redisCacheSecretPath" -}}/var/run/secrets/broker/redis-cache-secret{{- end }}
{{- define "itb.hs256SecretPath" -}}/var/run/secrets/broker/hs256-secret{{- end }}
{{- define "itb.introspectionKeyPath" -}}/var/run/secrets/broker/introspection-client-key.json{{- end }}
{{- define "itb.redisCaDir" -}}/etc/redis-ca{{- end }}
{{- define "itb.redisPasswordDir" -}}/var/run/secrets/redis{{- end }}
{{- define "itb.httpPort" -}}8080{{- end }}
{{- define "itb.metricsPort" -}}9091{{- end }}

{{/*
Name of the Secret holding the API key and the other secret files.
*/}}
{{- define "itb.secretName" -}}
{{- default (include "itb.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/*
Which optional secret files are needed ("true" or "").
*/}}
{{- define "itb.needsBackendSecret" -}}
{{- if .Values.backendRoute.enabled }}true{{ end }}
{{- end }}

{{- define "itb.introspectionAuth" -}}
{{- with dig "session" "introspection" nil .Values.config }}
{{- default "client_secret_basic" .client_auth }}
{{- end }}
{{- end }}

{{- define "itb.needsIntrospectionSecret" -}}
{{- if eq (include "itb.introspectionAuth" .) "client_secret_basic" }}true{{ end }}
{{- end }}

{{- define "itb.needsIntrospectionKey" -}}
{{- if eq (include "itb.introspectionAuth" .) "private_key_jwt" }}true{{ end }}
{{- end }}

{{- define "itb.needsRedisCacheSecret" -}}
{{- if .Values.redisCacheSecret.enabled }}true{{ end }}
{{- end }}

{{/*
Redis in use ("true" or ""): a config.redis table or a URL from a Secret.
*/}}
{{- define "itb.redisEnabled" -}}
{{- if or .Values.config.redis .Values.redisUrlSecret.name }}true{{ end }}
{{- end }}

{{/*
Default of [redis] replicas: every replica that may share the limits, i.e.
the HPA's maxReplicas (or replicaCount without HPA), capped at 1000. With
on_unavailable = "local" each replica then holds 1/replicas of a limit while
Redis is down, so together they never exceed it.
*/}}
{{- define "itb.redisReplicas" -}}
{{- $n := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}{{ $n = int .Values.autoscaling.maxReplicas }}{{ end }}
{{- min (max $n 1) 1000 }}
{{- end }}

{{- define "itb.needsHs256Secret" -}}
{{- range (dig "session" "jwt" list .Values.config) }}
{{- if hasKey . "hs256_secret_file" }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Items of the broker-secrets volume (mounted at /var/run/secrets/broker).
*/}}
{{- define "itb.brokerSecretItems" -}}
{{- if include "itb.needsBackendSecret" . }}
- key: {{ .Values.secret.keys.backendSecret }}
  path: backend-secret
{{- end }}
{{- if include "itb.needsHs256Secret" . }}
- key: {{ .Values.secret.keys.hs256Secret }}
  path: hs256-secret
{{- end }}
{{- if include "itb.needsIntrospectionSecret" . }}
- key: {{ .Values.secret.keys.introspectionClientSecret }}
  path: introspection-secret
{{- end }}
{{- if include "itb.needsRedisCacheSecret" . }}
- key: {{ .Values.secret.keys.redisCacheSecret }}
  path: redis-cache-secret
{{- end }}
{{- if include "itb.needsIntrospectionKey" . }}
- key: {{ .Values.secret.keys.introspectionClientKey }}
  path: introspection-client-key.json
{{- end }}
{{- end }}

{{/*
Label matchers the PrometheusRule's expressions use for this release.
*/}}
{{- define "itb.metricSelector" -}}
{{- default (printf "job=%q,namespace=%q" (include "itb.fullname" .) .Release.Namespace) .Values.prometheusRule.selector }}
{{- end }}

{{/*
Refusals that need more than one value (the schema sees one subtree at a time).
*/}}
{{- define "itb.validate" -}}
{{- $perIp := dig "rate_limit" "per_ip" nil .Values.config }}
{{- if and .Values.ingress.enabled $perIp (not (dig "server" "trusted_proxies" list .Values.config)) }}
{{- fail "ingress.enabled with a per-IP limit (config.rate_limit.per_ip) needs config.server.trusted_proxies: the ingress controller's pod or load-balancer CIDRs, whose X-Forwarded-For the broker then believes. Without them every visitor shares the ingress controller's IP and bucket. Set them, or config.rate_limit.per_ip: null for no per-IP limit." }}
{{- end }}
{{- if and .Values.redis.ca (not (include "itb.redisEnabled" .)) }}
{{- fail "redis.ca needs Redis: config.redis or redisUrlSecret.name" }}
{{- end }}
{{- if and .Values.redis.passwordSecret (not (include "itb.redisEnabled" .)) }}
{{- fail "redis.passwordSecret needs Redis: config.redis or redisUrlSecret.name" }}
{{- end }}
{{- /* DESIGN.md §9.1: session sources share one user-id space only when they
       name the same issuer; any other pair needs distinct, non-empty
       user_id_prefix values, neither a prefix of the other. */}}
{{- $sources := list }}
{{- range $i, $j := (dig "session" "jwt" list .Values.config) }}
{{- $sources = append $sources (dict "name" (printf "config.session.jwt[%d]" $i) "issuer" ($j.issuer | default "") "prefix" ($j.user_id_prefix | default "")) }}
{{- end }}
{{- with (dig "session" "introspection" nil .Values.config) }}
{{- $sources = append $sources (dict "name" "config.session.introspection" "issuer" (.issuer | default "") "prefix" (.user_id_prefix | default "")) }}
{{- end }}
{{- range $i, $a := $sources }}
{{- range $j, $b := $sources }}
{{- if and (lt $i $j) (or (not $a.issuer) (ne $a.issuer $b.issuer)) }}
{{- if or (not $a.prefix) (not $b.prefix) (hasPrefix $a.prefix $b.prefix) (hasPrefix $b.prefix $a.prefix) }}
{{- fail (printf "%s (issuer %q) and %s (issuer %q) are different issuers: give them distinct, non-empty user_id_prefix values, neither a prefix of the other (now %q and %q), or one user id of each would be one Intellia user (DESIGN.md §9.1). Introspection shares the id space of a JWT issuer only with config.session.introspection.issuer set to it." $a.name $a.issuer $b.name $b.issuer $a.prefix $b.prefix) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $url := dig "redis" "url" "" .Values.config }}
{{- if and .Values.redis.ca $url (not (hasPrefix "rediss://" $url)) }}
{{- fail (printf "redis.ca is a CA for TLS: config.redis.url must be rediss://, not %s" $url) }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: preStop sleep + the broker's shutdown grace +
a margin, or the explicit value, which must be larger than the first two.
*/}}
{{- define "itb.terminationGracePeriodSeconds" -}}
{{- $grace := int (dig "server" "shutdown_grace_secs" 20 .Values.config) }}
{{- $preStop := int .Values.shutdown.preStopSleepSeconds }}
{{- $explicit := .Values.shutdown.terminationGracePeriodSeconds }}
{{- $drainSet := dig "server" "drain_delay_secs" nil .Values.config }}
{{- $drain := int (default 0 $drainSet) }}
{{- if and (not (kindIs "invalid" $drainSet)) (ge $drain $grace) }}
{{- fail (printf "config.server.drain_delay_secs (%d) must be shorter than config.server.shutdown_grace_secs (%d), or in-flight requests get no time to finish" $drain $grace) }}
{{- end }}
{{- if kindIs "invalid" $explicit }}
{{- add $preStop $grace (int .Values.shutdown.marginSeconds) }}
{{- else if le (int $explicit) (add $preStop $grace) }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must be larger than shutdown.preStopSleepSeconds (%d) + config.server.shutdown_grace_secs (%d), or the broker is killed before it has drained" (int $explicit) $preStop $grace) }}
{{- else }}
{{- int $explicit }}
{{- end }}
{{- end }}

{{/*
The broker's configuration: values.config plus the keys the chart manages
(listen addresses, secret file paths).
*/}}
{{- define "itb.brokerConfig" -}}
{{- $c := deepCopy .Values.config }}
{{- $server := (get $c "server") | default dict }}
{{- $_ := set $server "listen" (printf "0.0.0.0:%s" (include "itb.httpPort" .)) }}
{{- if .Values.metrics.enabled }}
{{- $_ := set $server "admin_listen" (printf "0.0.0.0:%s" (include "itb.metricsPort" .)) }}
{{- end }}
{{- $_ := set $c "server" $server }}
{{- $intellia := (get $c "intellia") | default dict }}
{{- $_ := set $intellia "api_key_file" (printf "%s/api-key" (include "itb.apiKeyDir" .)) }}
{{- $_ := set $c "intellia" $intellia }}
{{- if .Values.backendRoute.enabled }}
{{- $backend := dict "secret_file" (printf "%s/backend-secret" (include "itb.brokerSecretsDir" .)) }}
{{- if not (kindIs "invalid" .Values.backendRoute.maxFailuresPerMinute) }}
{{- $_ := set $backend "max_failures_per_minute" (int .Values.backendRoute.maxFailuresPerMinute) }}
{{- end }}
{{- $_ := set $c "backend" $backend }}
{{- end }}
{{- $redis := get $c "redis" }}
{{- if and $redis (hasKey $redis "url") .Values.redisUrlSecret.name }}
{{- fail "set the Redis URL once: config.redis.url or redisUrlSecret.name, not both" }}
{{- else if and $redis (not (hasKey $redis "url")) (not .Values.redisUrlSecret.name) }}
{{- fail "config.redis needs a url: config.redis.url, or redisUrlSecret.name for a URL kept in a Secret" }}
{{- end }}
{{- if include "itb.redisEnabled" . }}
{{- $redis = $redis | default dict }}
{{- if not (hasKey $redis "replicas") }}
{{- $_ := set $redis "replicas" (int (include "itb.redisReplicas" .)) }}
{{- end }}
{{- if include "itb.needsRedisCacheSecret" . }}
{{- $_ := set $redis "cache_secret_file" (include "itb.redisCacheSecretPath" .) }}
{{- end }}
{{- if .Values.redis.ca }}
{{- $_ := set $redis "ca_file" (printf "%s/ca.pem" (include "itb.redisCaDir" .)) }}
{{- end }}
{{- if .Values.redis.passwordSecret }}
{{- $_ := set $redis "password_file" (printf "%s/password" (include "itb.redisPasswordDir" .)) }}
{{- end }}
{{- $_ := set $c "redis" $redis }}
{{- else if include "itb.needsRedisCacheSecret" . }}
{{- fail "redisCacheSecret.enabled needs Redis: config.redis or redisUrlSecret.name" }}
{{- end }}
{{- if include "itb.needsIntrospectionSecret" . }}
{{- $_ := set $c.session.introspection "client_secret_file" (printf "%s/introspection-secret" (include "itb.brokerSecretsDir" .)) }}
{{- else if include "itb.needsIntrospectionKey" . }}
{{- $_ := set $c.session.introspection "client_key_file" (include "itb.introspectionKeyPath" .) }}
{{- end }}
{{- include "itb.toml.body" (dict "prefix" "" "table" $c) }}
{{- end }}

{{/*
A small TOML writer. Helm's toToml prints every number as a float (4096.0),
which a strict integer field rejects, so the chart writes TOML itself:
scalars first, then sub-tables ([a.b]) and arrays of tables ([[a.b]]).
Keys with a null value are left out (TOML has no null).
*/}}
{{- define "itb.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "itb.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}
{{- $all := true }}
{{- range . }}{{ if not (kindIs "map" .) }}{{ $all = false }}{{ end }}{{ end }}
{{- if $all }}true{{ end }}
{{- end }}
{{- end }}

{{- define "itb.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}
{{- if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "int32" .) (kindIs "uint64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "itb.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" . }}{ {{- range $i, $k := keys . | sortAlpha }}{{ if $i }},{{ end }} {{ include "itb.toml.key" $k }} = {{ include "itb.toml.value" (get $ $k) }}{{ end }} }
{{- else }}{{ fail (printf "config: cannot write a %s as TOML" (kindOf .)) }}
{{- end }}
{{- end }}

{{/* A key the broker reads as a float: always written with a decimal point. */}}
{{- define "itb.toml.float" -}}
{{- $f := float64 . }}
{{- if eq $f (float64 (int64 $f)) }}{{ int64 $f }}.0{{ else }}{{ $f }}{{ end }}
{{- end }}

{{- define "itb.toml.body" -}}
{{- $prefix := .prefix }}
{{- $t := .table }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "itb.toml.isTableArray" $v)) }}
{{- if has $k (list "sample_ratio") }}
{{ include "itb.toml.key" $k }} = {{ include "itb.toml.float" $v }}
{{- else }}
{{ include "itb.toml.key" $k }} = {{ include "itb.toml.value" $v }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- $full := include "itb.toml.key" $k }}
{{- if $prefix }}{{ $full = printf "%s.%s" $prefix $full }}{{ end }}
{{- if kindIs "map" $v }}

[{{ $full }}]
{{- include "itb.toml.body" (dict "prefix" $full "table" $v) }}
{{- else if include "itb.toml.isTableArray" $v }}
{{- range $item := $v }}

[[{{ $full }}]]
{{- include "itb.toml.body" (dict "prefix" $full "table" $item) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
