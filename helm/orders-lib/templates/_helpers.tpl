{{/*
Helpers shared by every order chart. A service chart's values live under a key
named after its folder (= chart name): helm/payment reads .Values.payment, so one
values file with a section per service can be passed to every chart.
*/}}

{{/* The identity: ServiceAccount, Vault auth role and Vault policy name. */}}
{{- define "orders-lib.identity" -}}
{{- printf "orders-%s" .Chart.Name -}}
{{- end -}}

{{/* This service's own values section. */}}
{{- define "orders-lib.values" -}}
{{- $svc := index .Values .Chart.Name -}}
{{- if not $svc -}}
{{- fail (printf "values: the section %q (named after the chart folder) is missing" .Chart.Name) -}}
{{- end -}}
{{- toYaml $svc -}}
{{- end -}}

{{- define "orders-lib.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orders-lib.identity" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "orders-lib.labels" -}}
{{ include "orders-lib.selectorLabels" . }}
app.kubernetes.io/part-of: orders
app.kubernetes.io/version: {{ .Chart.AppVersion | default .Chart.Version | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* image reference: registry/repository, then @digest when set, else :tag */}}
{{- define "orders-lib.image" -}}
{{- $g := .global.image -}}
{{- $i := .image -}}
{{- $repo := $i.repository -}}
{{- if $g.registry }}{{ $repo = printf "%s/%s" $g.registry $i.repository }}{{ end -}}
{{- $digest := $i.digest | default "" -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo ($i.tag | default $g.tag) -}}
{{- end -}}
{{- end -}}

{{/*
checkov.io/skip annotation for an image that is not pinned by digest: tags are how
Tilt and kind deliver images in development; production values set image.digest and
the skip disappears (tests/deploy checks both).
*/}}
{{- define "orders-lib.digestSkip" -}}
{{- if not .digest }}
checkov.io/skip1: CKV_K8S_43=image is pinned by tag in development (Tilt/kind); production values set image.digest
{{- end }}
{{- end -}}

{{/* Container security context every order container gets. */}}
{{- define "orders-lib.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsUser }}
readOnlyRootFilesystem: {{ .readOnlyRootFilesystem }}
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "orders-lib.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsUser }}
fsGroup: {{ .runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* imagePullSecrets from global.image.pullSecrets (names of existing Secrets). */}}
{{- define "orders-lib.imagePullSecrets" -}}
{{- with .image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
Files from existing Secrets that are not credentials: Vault's CA (every chart that
talks to Vault), PostgreSQL's CA (with "database": workers with database roles and
the bootstrap) and, for the workers, Temporal's CA (their client certificate and key
are issued in process from Vault PKI: never a Secret, never a file). Called
with (dict "g" $g "temporal" bool "database" bool); "env", "mounts" and "volumes" render the three
parts. Paths are fixed so the env values are known: /etc/orders/tls/<volume>/<key>.
*/}}
{{- define "orders-lib.tlsSecrets" -}}
{{- $out := list -}}
{{- if .g.vault.caSecret -}}
{{- $out = append $out (dict "volume" "vault-ca" "secret" .g.vault.caSecret "keys" (list "ca.crt")) -}}
{{- end -}}
{{- if .database -}}
{{- $db := .g.database.tls | default dict -}}
{{- if and $db.enabled (not $db.caSecret) -}}
{{- fail "global.database.tls.enabled needs global.database.tls.caSecret: an existing Secret with ca.crt, the CA of PostgreSQL's certificate" -}}
{{- end -}}
{{- if $db.enabled -}}
{{- $out = append $out (dict "volume" "database-ca" "secret" $db.caSecret "keys" (list "ca.crt")) -}}
{{- end -}}
{{- end -}}
{{- if .temporal -}}
{{- $tls := .g.temporal.tls -}}
{{- if and (not $tls.enabled) $tls.caSecret -}}
{{- fail "global.temporal.tls: caSecret is set but tls.enabled is false: enable TLS or clear it" -}}
{{- end -}}
{{- if and $tls.enabled $tls.caSecret -}}
{{- $out = append $out (dict "volume" "temporal-ca" "secret" $tls.caSecret "keys" (list "ca.crt")) -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "items" $out) -}}
{{- end -}}

{{- define "orders-lib.tlsEnv" -}}
{{- $items := (include "orders-lib.tlsSecrets" . | fromYaml).items -}}
{{- range $items }}
{{- if eq .volume "vault-ca" }}
- name: VAULT_CACERT
  value: /etc/orders/tls/vault-ca/ca.crt
{{- else if eq .volume "database-ca" }}
- name: ORDERS_DATABASE_SSLMODE
  value: verify-full
- name: ORDERS_DATABASE_SSLROOTCERT
  value: /etc/orders/tls/database-ca/ca.crt
{{- end }}
{{- end }}
{{- if .temporal }}
{{- $tls := .g.temporal.tls }}
{{- if $tls.enabled }}
- name: ORDERS_TEMPORAL_TLS
  value: "1"
- name: ORDERS_PKI_MOUNT
  value: {{ $tls.pkiMount | quote }}
- name: ORDERS_CERT_TTL
  value: {{ $tls.certTTLSeconds | quote }}
{{- if $tls.serverName }}
- name: ORDERS_TEMPORAL_TLS_SERVER_NAME
  value: {{ $tls.serverName | quote }}
{{- end }}
{{- end }}
{{- range $items }}
{{- if eq .volume "temporal-ca" }}
- name: ORDERS_TLS_CA_FILE
  value: /etc/orders/tls/temporal-ca/ca.crt
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "orders-lib.tlsMounts" -}}
{{- range (include "orders-lib.tlsSecrets" . | fromYaml).items }}
- name: {{ .volume }}
  mountPath: /etc/orders/tls/{{ .volume }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "orders-lib.tlsVolumes" -}}
{{- range (include "orders-lib.tlsSecrets" . | fromYaml).items }}
- name: {{ .volume }}
  secret:
    secretName: {{ .secret | quote }}
    defaultMode: 0440
    items:
      {{- range .keys }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
{{- end }}
{{- end -}}
