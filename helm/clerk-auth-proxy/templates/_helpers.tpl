{{/*
Named templates. Those marked PUBLIC are the interface for teams that put the proxy into
their own chart (docs/deploy.md): call them with a context whose .Values are this chart's
values (e.g. `dict "Values" .Values.authProxy "Release" .Release "Chart" .Chart`).
*/}}

{{- define "clerk-auth-proxy.name" -}}
{{- default "clerk-auth-proxy" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clerk-auth-proxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "clerk-auth-proxy.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "clerk-auth-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clerk-auth-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "clerk-auth-proxy.labels" -}}
{{ include "clerk-auth-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | default "unknown" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | default "Helm" }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{- end -}}

{{/*
The proxy's config file, from .Values.config. Refuses literal Clerk keys: anything but a
${VAR} reference would put a secret into the ConfigMap.
*/}}
{{- define "clerk-auth-proxy.configYaml" -}}
{{- $clerk := .Values.config.clerk | default dict -}}
{{- range $key := list "secret_key" "machine_secret_key" -}}
{{- $v := get $clerk $key | default "" | toString -}}
{{- if and $v (not (hasPrefix "${" $v)) -}}
{{- fail (printf "config.clerk.%s must be a ${VAR} reference (the key comes from the Secret %q via secretKeyRef), never a literal key" $key $.Values.clerkSecret.name) -}}
{{- end -}}
{{- end -}}
{{- $config := deepCopy .Values.config -}}
{{- $shared := .Values.sharedCache | default dict -}}
{{- if $shared.enabled -}}
{{- if not $shared.url -}}
{{- fail "sharedCache.enabled needs sharedCache.url (redis://, rediss://, redis+sentinel:// or redis+cluster://)" -}}
{{- end -}}
{{- $cache := get $config "cache" | default dict -}}
{{- $entry := dict "url" $shared.url -}}
{{- if $shared.username }}{{- $_ := set $entry "username" $shared.username -}}{{- end -}}
{{- if and $shared.secretName $shared.passwordKey -}}
{{- $_ := set $entry "password_file" (printf "%s/%s" $shared.mountPath $shared.passwordKey) -}}
{{- end -}}
{{- if and $shared.secretName $shared.caKey -}}
{{- $_ := set $entry "ca_file" (printf "%s/%s" $shared.mountPath $shared.caKey) -}}
{{- end -}}
{{- $_ := set $cache "shared" (merge $entry ($shared.settings | default dict)) -}}
{{- $_ := set $config "cache" $cache -}}
{{- end -}}
{{- $revocation := .Values.revocation | default dict -}}
{{- if $revocation.secretName -}}
{{- $section := get $config "revocation" | default dict -}}
{{- $_ := set $section "secret_file" (printf "%s/%s" $revocation.mountPath $revocation.secretKey) -}}
{{- $_ := set $config "revocation" $section -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* "true" when the config turns the forward-auth listener on, else "". */}}
{{- define "clerk-auth-proxy.forwardAuth" -}}
{{- $fa := .Values.config.forward_auth | default dict -}}
{{- if $fa.enabled -}}true{{- end -}}
{{- end -}}

{{- define "clerk-auth-proxy.image" -}}
{{- $repository := required "proxy.image.repository is required: the proxy's image, e.g. --set proxy.image.repository=registry.example.com/clerk-auth-proxy (docs/deploy.md)" .Values.proxy.image.repository -}}
{{- printf "%s:%s" $repository (.Values.proxy.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}

{{/* PUBLIC: pod annotation that rolls the pods when the config changes. */}}
{{- define "clerk-auth-proxy.checksumAnnotation" -}}
checksum/clerk-auth-proxy-config: {{ include "clerk-auth-proxy.configYaml" . | sha256sum }}
{{- end -}}

{{/*
PUBLIC: the proxy container, as one list item. Put it under `initContainers:` when
.Values.sidecar.native (it then carries restartPolicy: Always), else under `containers:`.
*/}}
{{- define "clerk-auth-proxy.container" -}}
- name: clerk-auth-proxy
  image: {{ include "clerk-auth-proxy.image" . | quote }}
  imagePullPolicy: {{ .Values.proxy.image.pullPolicy }}
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/clerk-auth-proxy/config.yaml"]
  env:
    - name: CLERK_SECRET_KEY
      valueFrom:
        secretKeyRef:
          name: {{ .Values.clerkSecret.name | quote }}
          key: {{ .Values.clerkSecret.secretKey | quote }}
    - name: CLERK_MACHINE_SECRET_KEY
      valueFrom:
        secretKeyRef:
          name: {{ .Values.clerkSecret.name | quote }}
          key: {{ .Values.clerkSecret.machineSecretKey | quote }}
          optional: true
    - name: UPSTREAM_URL
      value: {{ printf "http://127.0.0.1:%d" (int .Values.app.port) | quote }}
    {{- with .Values.proxy.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ int .Values.config.listen.port }}
      protocol: TCP
    - name: admin
      containerPort: {{ int .Values.config.admin.port }}
      protocol: TCP
    {{- if include "clerk-auth-proxy.forwardAuth" . }}
    - name: forward-auth
      containerPort: {{ int .Values.config.forward_auth.port }}
      protocol: TCP
    {{- end }}
  # /healthz only means "the process runs": a native sidecar must pass its startup probe
  # before the app starts, so it cannot wait for the upstream here.
  startupProbe:
    httpGet: {path: /healthz, port: admin}
    periodSeconds: 1
    failureThreshold: 30
  # /readyz answers 503 while draining and while the app does not answer on 127.0.0.1.
  readinessProbe:
    httpGet: {path: /readyz, port: admin}
    periodSeconds: 5
    failureThreshold: 2
  livenessProbe:
    httpGet: {path: /healthz, port: admin}
    periodSeconds: 10
    failureThreshold: 3
  resources:
    {{- toYaml .Values.proxy.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.proxy.securityContext | nindent 4 }}
  volumeMounts:
    # A directory mount, not subPath: ConfigMap updates then reach the file and the
    # proxy's file watcher reloads it (a checksum annotation also rolls the pods).
    - name: clerk-auth-proxy-config
      mountPath: /etc/clerk-auth-proxy
      readOnly: true
    - name: clerk-auth-proxy-tmp
      mountPath: /tmp
    {{- if .Values.clerkSecret.mountPath }}
    - name: clerk-auth-proxy-clerk-secret
      mountPath: {{ .Values.clerkSecret.mountPath | quote }}
      readOnly: true
    {{- end }}
    {{- if and .Values.sharedCache.enabled .Values.sharedCache.secretName }}
    - name: clerk-auth-proxy-redis-secret
      mountPath: {{ .Values.sharedCache.mountPath | quote }}
      readOnly: true
    {{- end }}
    {{- if .Values.revocation.secretName }}
    - name: clerk-auth-proxy-revocation-secret
      mountPath: {{ .Values.revocation.mountPath | quote }}
      readOnly: true
    {{- end }}
{{- end -}}

{{/* PUBLIC: the volumes the proxy container mounts, as list items. */}}
{{- define "clerk-auth-proxy.volumes" -}}
- name: clerk-auth-proxy-config
  configMap:
    name: {{ include "clerk-auth-proxy.fullname" . }}
- name: clerk-auth-proxy-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- if .Values.clerkSecret.mountPath }}
- name: clerk-auth-proxy-clerk-secret
  secret:
    secretName: {{ .Values.clerkSecret.name | quote }}
    defaultMode: 0440
{{- end }}
{{- if and .Values.sharedCache.enabled .Values.sharedCache.secretName }}
- name: clerk-auth-proxy-redis-secret
  secret:
    secretName: {{ .Values.sharedCache.secretName | quote }}
    defaultMode: 0440
{{- end }}
{{- if .Values.revocation.secretName }}
- name: clerk-auth-proxy-revocation-secret
  secret:
    secretName: {{ .Values.revocation.secretName | quote }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/*
Seconds in a duration as the proxy's config reads it: 30, 1.5, "30s", "250ms", "1.5m",
"2h", "1d" (proxy/config/values.py parse_duration). Anything else fails the render.
*/}}
{{- define "clerk-auth-proxy.seconds" -}}
{{- $v := . -}}
{{- if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- $v | float64 -}}
{{- else if and (kindIs "string" $v) (regexMatch "^\\s*[0-9]+(\\.[0-9]+)?\\s*(ms|s|m|h|d)?\\s*$" $v) -}}
{{- $number := regexFind "[0-9]+(\\.[0-9]+)?" $v | float64 -}}
{{- $unit := regexFind "(ms|s|m|h|d)\\s*$" $v | trim -}}
{{- $scale := get (dict "" 1.0 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0) $unit -}}
{{- mulf $number $scale -}}
{{- else -}}
{{- fail (printf "not a duration: %v (expected 30, 30s, 250ms, 1.5m, 2h or 1d)" $v) -}}
{{- end -}}
{{- end -}}

{{/*
PUBLIC: terminationGracePeriodSeconds, from the values it must cover. The app's part:
its preStop sleep and its own shutdown. The proxy's part: shutdown.delay +
shutdown.grace_period + 1 s (it exits within that, whatever it holds). A native sidecar
gets SIGTERM only after the app has exited (one after the other); a plain container gets
it with the app (the longer of the two). Plus terminationMarginSeconds.
*/}}
{{- define "clerk-auth-proxy.terminationGracePeriodSeconds" -}}
{{- $shutdown := .Values.config.shutdown | default dict -}}
{{- $delay := include "clerk-auth-proxy.seconds" (hasKey $shutdown "delay" | ternary $shutdown.delay 0) | float64 -}}
{{- $grace := include "clerk-auth-proxy.seconds" (hasKey $shutdown "grace_period" | ternary $shutdown.grace_period 25) | float64 -}}
{{- $proxy := addf $delay $grace 1 -}}
{{- $app := addf .Values.app.preStopSleepSeconds (.Values.app.shutdownSeconds | default 0) -}}
{{- $both := .Values.sidecar.native | ternary (addf $app $proxy) (maxf $app $proxy) -}}
{{- $derived := addf $both .Values.terminationMarginSeconds | ceil | int -}}
{{- $set := .Values.terminationGracePeriodSeconds -}}
{{- if not (kindIs "invalid" $set) -}}
{{- if lt (int $set) $derived -}}
{{- fail (printf "terminationGracePeriodSeconds %v is below the %d s the drain needs (app.preStopSleepSeconds + app.shutdownSeconds + config.shutdown.delay + config.shutdown.grace_period + 1 + terminationMarginSeconds); leave it unset to derive it" $set $derived) -}}
{{- end -}}
{{- int $set -}}
{{- else -}}
{{- $derived -}}
{{- end -}}
{{- end -}}
