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
{{- include "itb.commonLabels" . }}
{{- end }}

{{/*
commonLabels, after the chart's own labels (which they may not replace: a
duplicate key would make the object invalid, and the selector labels must stay).
*/}}
{{- define "itb.commonLabels" -}}
{{- range $k, $v := .Values.commonLabels }}
{{- if or (hasPrefix "app.kubernetes.io/" $k) (eq $k "helm.sh/chart") }}
{{- fail (printf "commonLabels: %s is one of the chart's own labels; choose another key" $k) }}
{{- end }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- end }}

{{/*
An object's annotations: commonAnnotations, then the object's own (which win),
as a whole `annotations:` block, or nothing when there are none. Call with
(dict "ctx" $ "own" $ownAnnotations).
*/}}
{{- define "itb.annotations" -}}
{{- $all := merge (deepCopy (.own | default dict)) (deepCopy (.ctx.Values.commonAnnotations | default dict)) }}
{{- with $all -}}
annotations:
  {{- range $k, $v := . }}
  {{ $k }}: {{ $v | quote }}
  {{- end }}
{{- end }}
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

{{/*
The broker image: [registry/]repository(:tag|@digest). The registry is
global.imageRegistry, else image.registry; a repository that names its own
registry host (a first component with "." or ":", or "localhost", as Docker
reads it) keeps it unless global.imageRegistry is set.
*/}}
{{- define "itb.image" -}}
{{- $repo := .Values.image.repository }}
{{- $first := index (splitList "/" $repo) 0 }}
{{- $ownHost := and (gt (len (splitList "/" $repo)) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- $registry := "" }}
{{- with (dig "imageRegistry" "" (.Values.global | default dict)) }}
{{- $registry = . }}
{{- else }}
{{- if not $ownHost }}{{ $registry = .Values.image.registry }}{{ end }}
{{- end }}
{{- $name := ternary (printf "%s/%s" (trimSuffix "/" $registry) $repo) $repo (ne $registry "") }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $name .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $name (include "itb.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
imagePullSecrets: global.imagePullSecrets then imagePullSecrets, each a name or
{name: ...}, without duplicates, as a YAML list (empty: nothing).
*/}}
{{- define "itb.imagePullSecrets" -}}
{{- $names := list }}
{{- range (concat (dig "imagePullSecrets" list (.Values.global | default dict)) (.Values.imagePullSecrets | default list)) }}
{{- $n := . }}
{{- if kindIs "map" . }}{{ $n = .name }}{{ end }}
{{- if and $n (not (has $n $names)) }}{{ $names = append $names $n }}{{ end }}
{{- end }}
{{- range $names }}
- name: {{ . }}
{{- end }}
{{- end }}

{{/*
Fixed paths and ports, shared with the Dockerfile and the README.
*/}}
{{- define "itb.configDir" -}}/etc/intellia-token-broker{{- end }}
{{- define "itb.configPath" -}}/etc/intellia-token-broker/config.json{{- end }}
{{- define "itb.apiKeyDir" -}}/var/run/secrets/intellia{{- end }}
{{- define "itb.brokerSecretsDir" -}}/var/run/secrets/broker{{- end }}
{{- define "itb.redisCacheSecretPath" -}}/var/run/secrets/broker/redis-cache-secret{{- end }}
{{- define "itb.hs256SecretPath" -}}/var/run/secrets/broker/hs256-secret{{- end }}
{{- define "itb.hs256IssuerDir" -}}/var/run/secrets/broker/hs256/{{- end }}
{{- define "itb.introspectionKeyPath" -}}/var/run/secrets/broker/introspection-client-key.json{{- end }}
{{- define "itb.redisCaDir" -}}/etc/redis-ca{{- end }}
{{- define "itb.redisPasswordDir" -}}/var/run/secrets/redis{{- end }}
{{- define "itb.httpPort" -}}8080{{- end }}
{{- define "itb.metricsPort" -}}9091{{- end }}
{{- define "itb.backendPort" -}}8081{{- end }}

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

{{/*
"true" when an issuer uses the one shared HS256 path (secret.keys.hs256Secret).
*/}}
{{- define "itb.needsHs256Secret" -}}
{{- range (dig "session" "jwt" list .Values.config) }}
{{- if eq (toString (get . "hs256_secret_file")) (include "itb.hs256SecretPath" $) }}true{{ end }}
{{- end }}
{{- end }}

{{/*
The Secret keys of the HS256 issuers with a file of their own
(/var/run/secrets/broker/hs256/<key>), space-separated. Fails when two issuers
name one file, or when an issuer's key is one the chart uses for another secret:
two issuers on one HS256 secret could each sign sessions for the other's users.
*/}}
{{- define "itb.hs256IssuerKeys" -}}
{{- $dir := include "itb.hs256IssuerDir" . }}
{{- $seen := dict }}
{{- range $i, $jwt := (dig "session" "jwt" list .Values.config) }}
{{- with $jwt.hs256_secret_file }}
{{- if hasKey $seen . }}
{{- fail (printf "config.session.jwt[%d].hs256_secret_file is also config.session.jwt[%s]'s: each HS256 issuer needs a secret of its own (%s<key>), or either site could sign sessions for the other's users" $i (get $seen .) $dir) }}
{{- end }}
{{- $_ := set $seen . (toString $i) }}
{{- end }}
{{- end }}
{{- $others := values (omit .Values.secret.keys "hs256Secret") }}
{{- if include "itb.needsHs256Secret" . }}{{ $others = append $others .Values.secret.keys.hs256Secret }}{{ end }}
{{- range $path := keys $seen | sortAlpha }}
{{- if hasPrefix $dir $path }}
{{- $key := trimPrefix $dir $path }}
{{- if has $key $others }}
{{- fail (printf "config.session.jwt[%s].hs256_secret_file names Secret key %q, which holds another secret (secret.keys): give each HS256 issuer a key of its own" (get $seen $path) $key) }}
{{- end }}
{{- $key }} {{ end }}
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
{{- range (include "itb.hs256IssuerKeys" . | splitList " " | compact) }}
- key: {{ . }}
  path: hs256/{{ . }}
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
{{- /* User-id isolation: session sources share one user-id space only when they
       name the same issuer; any other pair needs distinct, non-empty
       user_id_prefix values, neither a prefix of the other. */}}
{{- $sources := list }}
{{- range $i, $j := (dig "session" "jwt" list .Values.config) }}
{{- $sources = append $sources (dict "name" (printf "config.session.jwt[%d]" $i) "issuer" ($j.issuer | default "") "prefix" ($j.user_id_prefix | default "")) }}
{{- end }}
{{- with (dig "session" "introspection" nil .Values.config) }}
{{- $sources = append $sources (dict "name" "config.session.introspection" "issuer" (.issuer | default "") "prefix" (.user_id_prefix | default "")) }}
{{- end }}
{{- /* A site asked through [[session.endpoint]] is the issuer named by its url's origin. */}}
{{- range $i, $e := (dig "session" "endpoint" list .Values.config) }}
{{- $u := urlParse ($e.url | default "") }}
{{- $host := lower $u.host }}
{{- if eq $u.scheme "https" }}{{- $host = trimSuffix ":443" $host }}{{- else if eq $u.scheme "http" }}{{- $host = trimSuffix ":80" $host }}{{- end }}
{{- $sources = append $sources (dict "name" (printf "config.session.endpoint[%d]" $i) "issuer" (printf "%s://%s" $u.scheme $host) "prefix" ($e.user_id_prefix | default "")) }}
{{- end }}
{{- range $i, $a := $sources }}
{{- range $j, $b := $sources }}
{{- if and (lt $i $j) (or (not $a.issuer) (ne $a.issuer $b.issuer)) }}
{{- if or (not $a.prefix) (not $b.prefix) (hasPrefix $a.prefix $b.prefix) (hasPrefix $b.prefix $a.prefix) }}
{{- fail (printf "%s (issuer %q) and %s (issuer %q) are different issuers: give them distinct, non-empty user_id_prefix values, neither a prefix of the other (now %q and %q), or one user id of each would be one Intellia user (user-id isolation: README, Security model). Introspection shares the id space of a JWT issuer only with config.session.introspection.issuer set to it." $a.name $a.issuer $b.name $b.issuer $a.prefix $b.prefix) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $chartVolumes := list "config" "api-key" "broker-secrets" "redis-ca" "redis-password" }}
{{- range .Values.extraVolumes }}
{{- if has .name $chartVolumes }}
{{- fail (printf "extraVolumes: the name %q is the chart's own volume; choose another" .name) }}
{{- end }}
{{- end }}
{{- $chartDirs := list (include "itb.configDir" .) (include "itb.apiKeyDir" .) (include "itb.brokerSecretsDir" .) (include "itb.redisCaDir" .) (include "itb.redisPasswordDir" .) }}
{{- range .Values.extraVolumeMounts }}
{{- $path := trimSuffix "/" .mountPath }}
{{- range $chartDirs }}
{{- if or (eq $path .) (hasPrefix (printf "%s/" .) $path) (hasPrefix (printf "%s/" $path) .) }}
{{- fail (printf "extraVolumeMounts: %s would hide or share the chart's %s (config and secret files); mount elsewhere" $path .) }}
{{- end }}
{{- end }}
{{- end }}
{{- range .Values.envFrom }}
{{- if and .secretRef (eq .secretRef.name (include "itb.secretName" $)) }}
{{- fail (printf "envFrom: Secret %s holds the Intellia API key, which is only ever a file; list the variables you need in extraEnv instead" .secretRef.name) }}
{{- end }}
{{- end }}
{{- if and .Values.ingress.enabled .Values.httpRoute.enabled }}
{{- fail "ingress.enabled and httpRoute.enabled: expose the broker through an Ingress or a Gateway API HTTPRoute, not both" }}
{{- end }}
{{- $ports := list (int .Values.service.port) }}
{{- if .Values.metrics.enabled }}{{ $ports = append $ports (int .Values.service.metricsPort) }}{{ end }}
{{- if .Values.backendRoute.enabled }}{{ $ports = append $ports (int .Values.service.backendPort) }}{{ end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "service.port, service.metricsPort and service.backendPort must differ (now %v): a route or scrape of one port would reach another, and the backend route must never be reachable through the public port" $ports) }}
{{- end }}
{{- if and .Values.backendRoute.enabled .Values.networkPolicy.enabled (not .Values.backendRoute.allowedFrom) }}
{{- fail "backendRoute.allowedFrom is empty: the NetworkPolicy would admit any caller to the backend port. List your web backend's pods (NetworkPolicyPeer objects), e.g. [{podSelector: {matchLabels: {app: web}}}]; [{podSelector: {}}] admits this namespace's pods" }}
{{- end }}
{{- range .Values.extraContainers }}
{{- if eq (.name | default "") "broker" }}
{{- fail "extraContainers: the name \"broker\" is the chart's own container; choose another" }}
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
(listen addresses, secret file paths), as JSON. A null leaves its key out
(`rate_limit.per_ip: null` = no per-IP limit): to the broker a null is a
value, and a wrong type for most keys.
*/}}
{{- define "itb.brokerConfig" -}}
{{- $c := deepCopy .Values.config }}
{{- $server := (get $c "server") | default dict }}
{{- $_ := set $server "listen" (printf "%s:%s" (include "itb.listenHost" .) (include "itb.httpPort" .)) }}
{{- if .Values.metrics.enabled }}
{{- $_ := set $server "admin_listen" (printf "%s:%s" (include "itb.listenHost" .) (include "itb.metricsPort" .)) }}
{{- end }}
{{- $_ := set $c "server" $server }}
{{- $intellia := (get $c "intellia") | default dict }}
{{- $_ := set $intellia "api_key_file" (printf "%s/api-key" (include "itb.apiKeyDir" .)) }}
{{- $_ := set $c "intellia" $intellia }}
{{- if .Values.backendRoute.enabled }}
{{- /* On the pod's interfaces, so other pods reach it through the backend Service port. */}}
{{- $backend := dict "secret_file" (printf "%s/backend-secret" (include "itb.brokerSecretsDir" .)) "listen" (printf "%s:%s" (include "itb.listenHost" .) (include "itb.backendPort" .)) }}
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
{{- include "itb.dropNulls" $c }}
{{- end }}

{{/*
JSON of a map with every null-valued key removed, at any depth (lists of
maps included). Go templates have no recursive functions, hence the JSON
round trip through include.
*/}}
{{- define "itb.dropNulls" -}}
{{- $out := dict }}
{{- range $k, $v := . }}
{{- if kindIs "map" $v }}
{{- $_ := set $out $k (include "itb.dropNulls" $v | fromJson) }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}
{{- if kindIs "map" . }}
{{- $items = append $items (include "itb.dropNulls" . | fromJson) }}
{{- else if not (kindIs "invalid" .) }}
{{- $items = append $items . }}
{{- end }}
{{- end }}
{{- $_ := set $out $k $items }}
{{- else if not (kindIs "invalid" $v) }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Address the broker binds: the IPv6 wildcard when the Service asks for IPv6
(an IPv6-only or dual-stack pod; Linux accepts IPv4 on it too), else IPv4's,
which works where IPv6 is disabled in the pod.
*/}}
{{- define "itb.listenHost" -}}
{{- $policy := .Values.service.ipFamilyPolicy | default "SingleStack" }}
{{- if or (has "IPv6" (.Values.service.ipFamilies | default list)) (ne $policy "SingleStack") }}[::]{{ else }}0.0.0.0{{ end }}
{{- end }}

{{/*
Labels of the `helm test` pods: not the broker's selector labels, so the
Service, PodDisruptionBudget and NetworkPolicy of the broker never select them.
*/}}
{{- define "itb.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "itb.name" . | trunc 58 | trimSuffix "-" }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "itb.testLabels" -}}
helm.sh/chart: {{ include "itb.chart" . }}
{{ include "itb.testSelectorLabels" . }}
app.kubernetes.io/version: {{ include "itb.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/component: helm-test
app.kubernetes.io/part-of: intellia
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- include "itb.commonLabels" . }}
{{- end }}

{{/*
The pod's and the container's securityContext: the values with null keys
left out, so an OpenShift values file can unset runAsUser, runAsGroup and
fsGroup (the restricted SCC assigns them from the namespace's range).
*/}}
{{- define "itb.podSecurityContext" -}}
{{- include "itb.dropNulls" .Values.podSecurityContext | fromJson | toYaml }}
{{- end }}

{{- define "itb.containerSecurityContext" -}}
{{- include "itb.dropNulls" .Values.securityContext | fromJson | toYaml }}
{{- end }}

{{/*
What the broker container and the `doctor` test pod share, so the test
checks the configuration the Deployment runs with: env, volume mounts and
volumes.
*/}}
{{- define "itb.env" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
# So `kubectl exec deploy/... -- intellia-token-broker doctor` (and check-config)
# find the same file `serve` runs with.
- name: BROKER_CONFIG
  value: {{ include "itb.configPath" . }}
{{- if .Values.redisUrlSecret.name }}
# The Redis URL usually carries a password: from a Secret, as the
# env override of [redis] url.
- name: BROKER__REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redisUrlSecret.name }}
      key: {{ .Values.redisUrlSecret.key }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "itb.volumeMounts" -}}
# Whole-directory mounts (no subPath), so the kubelet's atomic
# updates reach the broker: a rotated key is re-read in place.
- name: config
  mountPath: {{ include "itb.configDir" . }}
  readOnly: true
- name: api-key
  mountPath: {{ include "itb.apiKeyDir" . }}
  readOnly: true
{{- if include "itb.brokerSecretItems" . }}
- name: broker-secrets
  mountPath: {{ include "itb.brokerSecretsDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.redis.ca }}
# Outside the config directory: a mount nested in a ConfigMap
# volume needs a mount point the runtime cannot create there.
- name: redis-ca
  mountPath: {{ include "itb.redisCaDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.redis.passwordSecret }}
- name: redis-password
  mountPath: {{ include "itb.redisPasswordDir" . }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "itb.volumes" -}}
{{- $brokerItems := include "itb.brokerSecretItems" . -}}
- name: config
  configMap:
    name: {{ include "itb.fullname" . }}
    items:
      - key: config.json
        path: config.json
- name: api-key
  secret:
    secretName: {{ include "itb.secretName" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.secret.keys.apiKey }}
        path: api-key
{{- if $brokerItems }}
- name: broker-secrets
  secret:
    secretName: {{ include "itb.secretName" . }}
    defaultMode: 0440
    items:
      {{- $brokerItems | trim | nindent 6 }}
{{- end }}
{{- with .Values.redis.ca }}
- name: redis-ca
  {{- if .configMap }}
  configMap:
    name: {{ .configMap }}
  {{- else }}
  secret:
    secretName: {{ .secret }}
  {{- end }}
    defaultMode: 0444
    items:
      - key: {{ .key }}
        path: ca.pem
{{- end }}
{{- with .Values.redis.passwordSecret }}
- name: redis-password
  secret:
    secretName: {{ .name }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: password
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Egress of the broker's pods; the `doctor` test pod gets the same, so it
sees what the broker can reach.
*/}}
{{- define "itb.egressRules" -}}
{{- $np := .Values.networkPolicy -}}
# DNS.
- ports:
    {{- range $np.egress.dnsPorts }}
    - port: {{ . }}
      protocol: UDP
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.egress.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
# Intellia API (and public identity providers): public addresses only,
# never cluster-internal, shared (CGNAT) or link-local/metadata ranges.
- ports:
    - port: {{ $np.egress.intellia.port }}
      protocol: TCP
  to:
    {{- range $np.egress.intellia.ipBlocks }}
    - ipBlock:
        {{- toYaml . | nindent 8 }}
    {{- end }}
{{- with $np.egress.idp.to }}
# Identity provider (JWKS, OIDC discovery, introspection).
- to:
    {{- toYaml . | nindent 4 }}
  ports:
    {{- range $np.egress.idp.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- with $np.egress.redis.to }}
# Redis (shared limits and cache).
- to:
    {{- toYaml . | nindent 4 }}
  ports:
    - port: {{ $np.egress.redis.port }}
      protocol: TCP
{{- end }}
{{- with $np.egress.otlp.to }}
# OpenTelemetry collector (OTLP traces).
- to:
    {{- toYaml . | nindent 4 }}
  ports:
    {{- range $np.egress.otlp.ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- with $np.egress.extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod-level settings of the `helm test` pods: the broker's hardening.
*/}}
{{- define "itb.testPodSpec" -}}
restartPolicy: Never
# doctor gives up on a hanging endpoint within 30 s.
activeDeadlineSeconds: 120
serviceAccountName: {{ include "itb.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with include "itb.imagePullSecrets" . }}
imagePullSecrets:
  {{- . | trim | nindent 2 }}
{{- end }}
{{- with include "itb.podSecurityContext" . | fromYaml }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The OTLP endpoints the broker is given in the values (config.telemetry.otlp_endpoint,
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT in extraEnv) as
a JSON list, and whether envFrom or a valueFrom could set one unseen.
*/}}
{{- define "itb.otlpEndpoints" -}}
{{- $found := list }}
{{- with (dig "telemetry" "otlp_endpoint" "" .Values.config) }}{{ $found = append $found (dict "from" "config.telemetry.otlp_endpoint" "url" .) }}{{ end }}
{{- $hidden := false }}
{{- range .Values.extraEnv }}
{{- if has .name (list "OTEL_EXPORTER_OTLP_ENDPOINT" "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") }}
{{- if .value }}{{ $found = append $found (dict "from" (printf "extraEnv %s" .name) "url" .value) }}{{ else }}{{ $hidden = true }}{{ end }}
{{- end }}
{{- end }}
{{- if .Values.envFrom }}{{ $hidden = true }}{{ end }}
{{- toJson (dict "endpoints" $found "hidden" $hidden) }}
{{- end }}

{{/*
Whether the NetworkPolicy lets an OTLP endpoint through ("true" or ""): a peer
list in networkPolicy.egress.otlp.to with the endpoint's port, or an https URL
on 443 to a host outside the cluster (the public-443 rule).
*/}}
{{- define "itb.otlpAllowed" -}}
{{- $u := urlParse .url }}
{{- $hostPort := splitList ":" $u.host }}
{{- $host := first $hostPort }}
{{- $port := ternary (last $hostPort) (ternary "443" "80" (eq $u.scheme "https")) (gt (len $hostPort) 1) }}
{{- $np := .ctx.Values.networkPolicy }}
{{- $ports := list }}
{{- range $np.egress.otlp.ports }}{{ $ports = append $ports (toString (int .)) }}{{ end }}
{{- $inCluster := or (hasSuffix ".svc" $host) (contains ".svc." $host) (hasSuffix ".cluster.local" $host) (not (contains "." $host)) }}
{{- if and $np.egress.otlp.to (has $port $ports) }}true
{{- else if and (eq $port (toString (int $np.egress.intellia.port))) (eq $u.scheme "https") (not $inCluster) }}true
{{- end }}
{{- end }}
