{{/*
The bootstrap's pod: the install/upgrade Job (apply) and the drift CronJob (plan) run the
same image with the same identity, settings and mounts; only the command differs.
Called with (dict "ctx" . "command" (list ...) "container" name).
*/}}
{{- define "bootstrap.pod" -}}
{{- $ctx := .ctx -}}
{{- $b := include "orders-lib.values" $ctx | fromYaml -}}
{{- $g := $ctx.Values.global -}}
{{- $identity := include "orders-lib.identity" $ctx -}}
serviceAccountName: {{ $identity }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- include "orders-lib.imagePullSecrets" $g | nindent 0 }}
restartPolicy: Never
securityContext:
  {{- include "orders-lib.podSecurityContext" $g.securityContext | nindent 2 }}
containers:
  - name: {{ .container }}
    image: {{ include "orders-lib.image" (dict "global" $g "image" $b.image) | quote }}
    imagePullPolicy: {{ $g.image.pullPolicy }}
    command: {{ toJson .command }}
    env:
      - name: ORDERS_BOOTSTRAP_MODE
        value: cluster
      # admin credentials are files from the referenced Secret (see volumes)
      - name: ORDERS_STATE_DIR
        value: /var/run/orders
      - name: VAULT_ADDR
        value: {{ required "global.vault.address is required" $g.vault.address | quote }}
      - name: ORDERS_DB_HOST
        value: {{ $g.database.host | quote }}
      - name: ORDERS_DB_PORT
        value: {{ $g.database.port | quote }}
      - name: ORDERS_DB_NAME
        value: {{ $g.database.name | quote }}
      {{- if and $g.database.tls $g.database.tls.enabled $g.database.tls.vaultCaFile }}
      # Vault's own database connection verifies PostgreSQL with this file (in Vault's pods)
      - name: ORDERS_VAULT_DATABASE_SSLROOTCERT
        value: {{ $g.database.tls.vaultCaFile | quote }}
      {{- end }}
      - name: ORDERS_K8S_NAMESPACE
        value: {{ $ctx.Release.Namespace | quote }}
      - name: ORDERS_KUBERNETES_HOST
        value: {{ $b.kubernetes.host | quote }}
      - name: ORDERS_KUBERNETES_ISSUER
        value: {{ $b.kubernetes.issuer | quote }}
      # demo data only when asked for (development; never in production)
      - name: ORDERS_SEED_DEMO_DATA
        value: {{ $b.seedDemoData | toString | quote }}
      # kubernetes: log in as this Job's own ServiceAccount (no root token anywhere);
      # token: an admin token from the Secret (development on kind only)
      - name: ORDERS_BOOTSTRAP_VAULT_AUTH
        value: {{ $b.vaultAuth | quote }}
      {{- if eq $b.vaultAuth "kubernetes" }}
      - name: ORDERS_BOOTSTRAP_SA_TOKEN_FILE
        value: /var/run/secrets/orders/vault-token
      {{- end }}
      {{- if $b.watchdog.enabled }}
      # the session watchdog's login gets the password its Deployment mounts too
      - name: ORDERS_WATCHDOG_PASSWORD_FILE
        value: /var/run/orders/watchdog/session-watchdog-password
      {{- end }}
      {{- include "orders-lib.tlsEnv" (dict "g" $g "temporal" false "database" true) | nindent 6 }}
      {{- with $b.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    resources:
      {{- toYaml $b.resources | nindent 6 }}
    securityContext:
      {{- include "orders-lib.containerSecurityContext" $g.securityContext | nindent 6 }}
    volumeMounts:
      - name: state
        mountPath: /var/run/orders
      - name: admin
        mountPath: /var/run/orders/secrets
        readOnly: true
      - name: tmp
        mountPath: /tmp
      {{- if $b.watchdog.enabled }}
      - name: watchdog-password
        mountPath: /var/run/orders/watchdog
        readOnly: true
      {{- end }}
      {{- if eq $b.vaultAuth "kubernetes" }}
      - name: vault-token
        mountPath: /var/run/secrets/orders
        readOnly: true
      {{- end }}
      {{- include "orders-lib.tlsMounts" (dict "g" $g "temporal" false "database" true) | nindent 6 }}
      {{- with $b.extraVolumeMounts }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
volumes:
  - name: state
    emptyDir:
      sizeLimit: 16Mi
  - name: admin
    secret:
      secretName: {{ required "bootstrap.adminSecretName is required: a Secret created out of band" $b.adminSecretName }}
      defaultMode: 0400
      items:
        {{- if eq $b.vaultAuth "token" }}
        - key: vault-root-token
          path: vault-root-token
        {{- end }}
        - key: postgres-superuser-password
          path: postgres-superuser-password
  {{- if $b.watchdog.enabled }}
  - name: watchdog-password
    secret:
      secretName: {{ required "bootstrap.watchdog.passwordSecretName is required: a Secret created out of band" $b.watchdog.passwordSecretName }}
      defaultMode: 0400
      items:
        - key: session-watchdog-password
          path: session-watchdog-password
  {{- end }}
  {{- if eq $b.vaultAuth "kubernetes" }}
  # a short-lived token for Vault's Kubernetes auth only (audience vault)
  - name: vault-token
    projected:
      defaultMode: 0400
      sources:
        - serviceAccountToken:
            audience: vault
            expirationSeconds: 600
            path: vault-token
  {{- end }}
  - name: tmp
    emptyDir:
      medium: Memory
      sizeLimit: 16Mi
  {{- include "orders-lib.tlsVolumes" (dict "g" $g "temporal" false "database" true) | nindent 2 }}
  {{- with $b.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}
