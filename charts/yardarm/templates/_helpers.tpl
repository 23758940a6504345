{{/*
Shared pieces of the yardarm chart. The names the services dial (Services, datastore
pods) are already in the values, rendered for the release `values.release`, so the chart
refuses any other release name rather than start pods that dial the wrong hosts.
*/}}

{{- define "yardarm.checkRelease" -}}
{{- if ne .Release.Name .Values.release -}}
{{- fail (printf "the values name things for the release %q, not %q: re-render them with `uv run yardarm chart --release %s -o values.yaml` and pass that file" .Values.release .Release.Name .Release.Name) -}}
{{- end -}}
{{- end -}}

{{- define "yardarm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Helm's recommended labels. Call with (dict "root" $ "component" "orders" "version" "0.1.0"). */}}
{{- define "yardarm.labels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .version | default .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: yardarm
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "yardarm.chart" .root }}
{{- end -}}

{{/* What selects a workload's pods (stable for the workload's life). */}}
{{- define "yardarm.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .track }}
yardarm.dev/service: {{ $.component }}
yardarm.dev/track: {{ . }}
{{- end }}
{{- end -}}

{{/* An image reference from {repository, tag} or a full "repo:tag" string. */}}
{{- define "yardarm.image" -}}
{{- $image := .image -}}
{{- $ref := "" -}}
{{- if kindIs "string" $image -}}
{{- $ref = $image -}}
{{- else -}}
{{- $ref = printf "%s:%s" $image.repository $image.tag -}}
{{- end -}}
{{- with .root.Values.image.registry -}}
{{- printf "%s/%s" (trimSuffix "/" .) $ref -}}
{{- else -}}
{{- $ref -}}
{{- end -}}
{{- end -}}

{{- define "yardarm.credentialsSecret" -}}
{{- .Values.credentials.existingSecret | default (printf "%s-credentials" .Release.Name) -}}
{{- end -}}

{{- define "yardarm.postgresSecret" -}}
{{- .Values.postgres.existingSecret | default (printf "%s-postgres" .Release.Name) -}}
{{- end -}}

{{/* The secret file name of a principal's token in the stack's home layout. */}}
{{- define "yardarm.tokenPath" -}}
{{- if eq . "admin" -}}admin-token{{- else -}}credentials/{{ . }}.token{{- end -}}
{{- end -}}

{{- define "yardarm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "yardarm.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{- define "yardarm.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ . }}
  periodSeconds: 2
  failureThreshold: 2
startupProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 2
  failureThreshold: 30
{{- end -}}

{{/*
The env every service pod shares beyond its workload's `env`: its instance name (the
pod's), the drain delay behind the readiness probe (period 2 s x failure threshold 2 =
4 s, rounded up to 5: the endpoints drop the pod before its listeners stop), and the
OTLP endpoint when one is set. Call with (dict "root" $ "service" "orders" "env" $env).
*/}}
{{- define "yardarm.env" -}}
{{- $prefix := printf "YARDARM_%s_" (upper .service) -}}
{{- range $key, $value := .env -}}
- name: {{ $key }}
  value: {{ $value | toString | quote }}
{{ end -}}
- name: {{ $prefix }}INSTANCE
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: {{ $prefix }}DRAIN_DELAY_S
  value: "5"
{{- with .root.Values.otlp.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
The credentials a pod reads, in the stack home's layout. Kubernetes cannot give a
Secret's file to the pod's user with mode 0600 (fsGroup adds group read, and without
fsGroup the file is root's), and asyncpg ignores a pgpass readable by group or others.
So the Secrets are projected read-only at `<home>-secrets` (0440: root and fsGroup 10001),
and the `home` init container copies the pod's items into an in-memory emptyDir at
`mounts.home`, owned by uid 10001 with mode 0600, as `yardarm up` writes them locally.
A token changed in the Secret reaches a pod at its next start.

Call the volume helper with (dict "root" $ "items" (list "admin-token" "credentials/pgpass")).
*/}}
{{- define "yardarm.homeVolumes" -}}
{{- $root := .root -}}
{{- $credentials := list -}}
{{- $postgres := list -}}
{{- range .items -}}
{{- if eq . "credentials/pgpass" -}}
{{- $postgres = append $postgres . -}}
{{- else -}}
{{- $credentials = append $credentials . -}}
{{- end -}}
{{- end -}}
- name: home
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
- name: secrets
  projected:
    defaultMode: 0440
    sources:
      {{- if $credentials }}
      - secret:
          name: {{ include "yardarm.credentialsSecret" $root }}
          items:
            {{- range $credentials }}
            - key: {{ trimPrefix "credentials/" . }}
              path: {{ . }}
              mode: 0440
            {{- end }}
      {{- end }}
      {{- if $postgres }}
      - secret:
          name: {{ include "yardarm.postgresSecret" $root }}
          items:
            - key: pgpass
              path: credentials/pgpass
              mode: 0440
      {{- end }}
{{- end -}}

{{/* The init container that lays the home out (see yardarm.homeVolumes). Call with (dict "root" $ "image" $ref "items" $items "resources" $res). */}}
{{- define "yardarm.homeInit" -}}
- name: home
  image: {{ .image }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command:
    - python
    - -c
    - |
      import os, sys
      source, home, *items = sys.argv[1:]
      for item in items:
          path = os.path.join(home, item)
          os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
          with open(os.path.join(source, item), "rb") as secret:
              data = secret.read()
          fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
          with os.fdopen(fd, "wb") as out:
              out.write(data)
    - {{ printf "%s-secrets" .root.Values.mounts.home }}
    - {{ .root.Values.mounts.home }}
    {{- range .items }}
    - {{ . }}
    {{- end }}
  securityContext:
    {{- include "yardarm.containerSecurityContext" . | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 32Mi
    limits:
      cpu: 100m
      memory: 64Mi
  volumeMounts:
    - name: home
      mountPath: {{ .root.Values.mounts.home }}
    - name: secrets
      mountPath: {{ printf "%s-secrets" .root.Values.mounts.home }}
      readOnly: true
{{- end -}}

{{- define "yardarm.homeMounts" -}}
- name: home
  mountPath: {{ .Values.mounts.home }}
  readOnly: true
{{- end -}}
