{{/*
"orders-lib.worker": every object one order worker needs, from the service chart's
values. Call it from a service chart as
  {{ include "orders-lib.worker" (dict "ctx" . "database" true) }}
"database" is fixed by the chart, not by values: the orchestrator passes false and
gets no ORDERS_DB_* variables and no egress to Postgres, whatever values say.
*/}}
{{- define "orders-lib.worker" -}}
{{- $ctx := .ctx -}}
{{- $usesDatabase := .database -}}
{{- $svc := include "orders-lib.values" $ctx | fromYaml -}}
{{- $g := $ctx.Values.global -}}
{{- $identity := include "orders-lib.identity" $ctx -}}
{{- $vaultAddr := required "global.vault.address is required: the Vault/OpenBao URL the worker logs in to (e.g. https://vault.vault.svc:8200)" $g.vault.address -}}
{{- $temporalAddr := required "global.temporal.address is required: host:port of the Temporal frontend" $g.temporal.address -}}
{{ include "orders-lib.serviceAccount" $ctx }}
---
{{ include "orders-lib.deployment" (dict "ctx" $ctx "svc" $svc "g" $g "identity" $identity "vaultAddr" $vaultAddr "temporalAddr" $temporalAddr "database" $usesDatabase) }}
---
{{ include "orders-lib.clusterService" (dict "ctx" $ctx "suffix" "-metrics" "portName" "metrics" "port" $g.metricsPort) }}
---
{{- $egress := list "temporal" "vault" }}
{{- if $usesDatabase }}{{ $egress = append $egress "postgres" }}{{ end }}
{{ include "orders-lib.networkPolicy" (dict "ctx" $ctx "np" $g.networkPolicy "egress" $egress "ingressPort" $g.metricsPort "ingressFrom" (list $g.networkPolicy.monitoring)) }}
---
{{ include "orders-lib.podDisruptionBudget" (dict "ctx" $ctx "svc" $svc) }}
{{- if $svc.autoscaling.enabled }}
---
{{ include "orders-lib.hpa" (dict "ctx" $ctx "svc" $svc) }}
{{- end }}
{{- if $g.monitoring.serviceMonitor.enabled }}
---
{{ include "orders-lib.serviceMonitor" (dict "ctx" $ctx "g" $g) }}
{{- end }}
{{- if $g.monitoring.prometheusRule.enabled }}
---
{{ include "orders-lib.prometheusRule" (dict "ctx" $ctx "g" $g "database" $usesDatabase) }}
{{- end }}
{{- end -}}

{{- define "orders-lib.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "orders-lib.identity" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "orders-lib.labels" . | nindent 4 }}
# The only credential in the pod is a projected, audience-bound token (see the
# Deployment); the legacy auto-mounted API token is off for the account and the pod.
automountServiceAccountToken: false
{{- end -}}

{{- define "orders-lib.deployment" -}}
{{- $ctx := .ctx -}}
{{- $svc := .svc -}}
{{- $g := .g -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .identity }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "orders-lib.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: worker
  {{- with (include "orders-lib.digestSkip" $svc.image | trim) }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  {{- if not $svc.autoscaling.enabled }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "orders-lib.selectorLabels" $ctx | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  template:
    metadata:
      labels:
        {{- include "orders-lib.labels" $ctx | nindent 8 }}
        app.kubernetes.io/component: worker
    spec:
      serviceAccountName: {{ .identity }}
      automountServiceAccountToken: false
      {{- include "orders-lib.imagePullSecrets" $g | nindent 6 }}
      enableServiceLinks: false
      # longer than the worker's 20 s graceful shutdown, so in-flight activities finish
      # and leases are revoked before the kubelet sends SIGKILL
      terminationGracePeriodSeconds: {{ $svc.terminationGracePeriodSeconds }}
      securityContext:
        {{- include "orders-lib.podSecurityContext" $g.securityContext | nindent 8 }}
      containers:
        - name: worker
          image: {{ include "orders-lib.image" (dict "global" $g "image" $svc.image) | quote }}
          imagePullPolicy: {{ $g.image.pullPolicy }}
          env:
            - name: VAULT_ADDR
              value: {{ .vaultAddr | quote }}
            - name: VAULT_AUTH_METHOD
              value: kubernetes
            - name: VAULT_AUTH_MOUNT
              value: {{ $g.vault.authMount | quote }}
            - name: VAULT_AUTH_ROLE
              value: {{ .identity | quote }}
            - name: VAULT_TOKEN_FILE
              value: /var/run/secrets/vault/token
            - name: TEMPORAL_ADDRESS
              value: {{ .temporalAddr | quote }}
            - name: TEMPORAL_NAMESPACE
              value: {{ $g.temporal.namespace | quote }}
            - name: ORDERS_TEMPORAL_CONNECT_DEADLINE
              value: {{ $g.temporal.connectDeadlineSeconds | quote }}
            {{- if .database }}
            - name: ORDERS_DB_HOST
              value: {{ required "global.database.host is required for a service with database roles" $g.database.host | quote }}
            - name: ORDERS_DB_PORT
              value: {{ $g.database.port | quote }}
            - name: ORDERS_DB_NAME
              value: {{ $g.database.name | quote }}
            {{- end }}
            - name: ORDERS_METRICS_PORT
              value: {{ $g.metricsPort | quote }}
            {{- include "orders-lib.tlsEnv" (dict "g" $g "temporal" true "database" .database) | nindent 12 }}
            {{- with $svc.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ $g.metricsPort }}
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: metrics
            periodSeconds: 5
            timeoutSeconds: 2
            failureThreshold: 2
          startupProbe:
            httpGet:
              path: /healthz
              port: metrics
            periodSeconds: 2
            failureThreshold: 30
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          securityContext:
            {{- include "orders-lib.containerSecurityContext" $g.securityContext | nindent 12 }}
          volumeMounts:
            - name: vault-token
              mountPath: /var/run/secrets/vault
              readOnly: true
            - name: tmp
              mountPath: /tmp
            {{- include "orders-lib.tlsMounts" (dict "g" $g "temporal" true "database" .database) | nindent 12 }}
            {{- with $svc.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        # the workload's identity for Vault: a ServiceAccount token bound to the
        # audience "vault", short-lived and rotated by the kubelet
        - name: vault-token
          projected:
            sources:
              - serviceAccountToken:
                  audience: {{ $g.vault.tokenAudience | quote }}
                  expirationSeconds: {{ $g.vault.tokenExpirationSeconds }}
                  path: token
        - name: tmp
          emptyDir:
            medium: Memory
            sizeLimit: 16Mi
        {{- include "orders-lib.tlsVolumes" (dict "g" $g "temporal" true "database" .database) | nindent 8 }}
        {{- with $svc.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/* A ClusterIP Service for one named container port. */}}
{{- define "orders-lib.clusterService" -}}
{{- $ctx := .ctx -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "orders-lib.identity" $ctx }}{{ .suffix }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "orders-lib.labels" $ctx | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "orders-lib.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: {{ .portName }}
      port: {{ .port }}
      targetPort: {{ .portName }}
      protocol: TCP
{{- end -}}

{{/*
NetworkPolicy: ingress only to one port from the given peers; egress only to DNS
and the named peers of "np" (for a worker: temporal, vault and, with database
roles, postgres). Ports are the destination pods' ports, not Service ports.
*/}}
{{- define "orders-lib.networkPolicy" -}}
{{- $ctx := .ctx -}}
{{- $np := .np -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "orders-lib.identity" $ctx }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "orders-lib.labels" $ctx | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "orders-lib.selectorLabels" $ctx | nindent 6 }}
  policyTypes: [Ingress, Egress]
  {{- if .ingressFrom }}
  ingress:
    - from:
        {{- range .ingressFrom }}
        {{- include "orders-lib.peer" . | nindent 8 }}
        {{- end }}
      ports:
        - port: {{ .ingressPort }}
          protocol: TCP
  {{- else }}
  ingress: []   # nothing may connect to it
  {{- end }}
  egress:
    - to:
        {{- include "orders-lib.peer" $np.dns | nindent 8 }}
      ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    {{- range .egress }}
    {{- $peer := index $np . }}
    - to:
        {{- include "orders-lib.peer" $peer | nindent 8 }}
      ports:
        - port: {{ $peer.port }}
          protocol: TCP
    {{- end }}
{{- end -}}

{{/*
NetworkPolicy peers from one values peer: by labels ({namespaceSelector, podSelector},
unless byLabels is false) and/or by address (ipBlocks: [{cidr, except}], e.g. NodeLocal DNSCache or a Vault
outside the cluster). At least one of the two is required (the schema says so too).
*/}}
{{- define "orders-lib.peer" -}}
{{- $byLabels := and .namespaceSelector (ne .byLabels false) -}}
{{- if not (or $byLabels .ipBlocks) -}}
{{- fail "a networkPolicy peer needs namespaceSelector (labels) or ipBlocks (addresses)" -}}
{{- end -}}
{{- if $byLabels }}
- namespaceSelector:
    matchLabels:
      {{- toYaml .namespaceSelector | nindent 6 }}
  podSelector:
    {{- if .podSelector }}
    matchLabels:
      {{- toYaml .podSelector | nindent 6 }}
    {{- else }} {}
    {{- end }}
{{- end }}
{{- range .ipBlocks }}
- ipBlock:
    cidr: {{ .cidr | quote }}
    {{- with .except }}
    except:
      {{- range . }}
      - {{ . | quote }}
      {{- end }}
    {{- end }}
{{- end }}
{{- end -}}

{{- define "orders-lib.podDisruptionBudget" -}}
{{- $ctx := .ctx -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "orders-lib.identity" $ctx }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "orders-lib.labels" $ctx | nindent 4 }}
spec:
  maxUnavailable: {{ .svc.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "orders-lib.selectorLabels" $ctx | nindent 6 }}
{{- end -}}

{{- define "orders-lib.hpa" -}}
{{- $ctx := .ctx -}}
{{- $a := .svc.autoscaling -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "orders-lib.identity" $ctx }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "orders-lib.labels" $ctx | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "orders-lib.identity" $ctx }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $a.targetCPUUtilizationPercentage }}
{{- end -}}
