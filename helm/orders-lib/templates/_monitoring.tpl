{{/*
Prometheus Operator objects for one worker, each rendered only when enabled in
global.monitoring. Alerts select this worker's metrics by the job label the
ServiceMonitor gives them (the metrics Service's name). Called from orders-lib.worker
with (dict "ctx" $ctx "g" $g "database" bool).
*/}}
{{- define "orders-lib.serviceMonitor" -}}
{{- $ctx := .ctx -}}
{{- $m := .g.monitoring.serviceMonitor -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "orders-lib.identity" $ctx }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "orders-lib.labels" $ctx | nindent 4 }}
    {{- with $m.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "orders-lib.selectorLabels" $ctx | nindent 6 }}
  endpoints:
    - port: metrics
      path: /metrics
      interval: {{ $m.interval }}
{{- end -}}

{{- define "orders-lib.prometheusRule" -}}
{{- $ctx := .ctx -}}
{{- $r := .g.monitoring.prometheusRule -}}
{{- $identity := include "orders-lib.identity" $ctx -}}
{{- $job := printf "%s-metrics" $identity -}}
{{- $ns := $ctx.Release.Namespace -}}
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: {{ $identity }}
  namespace: {{ $ns }}
  labels:
    {{- include "orders-lib.labels" $ctx | nindent 4 }}
    {{- with $r.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  groups:
    - name: {{ $identity }}
      rules:
        - alert: OrdersVaultTokenNearExpiry
          expr: min by (namespace, pod) (orders_vault_token_seconds_left{job="{{ $job }}", namespace="{{ $ns }}"}) < {{ $r.tokenSecondsLeftBelow }}
          for: 2m
          labels:
            severity: critical
            service: {{ $identity }}
          annotations:
            summary: "{{ $identity }}: Vault token close to expiry"
            description: "Pod {{ "{{" }} $labels.pod {{ "}}" }} has {{ "{{" }} $value | humanizeDuration {{ "}}" }} left on its Vault token and has not renewed or logged in again: check Vault and the worker's log (vault.*)."
        {{- if .g.temporal.tls.enabled }}
        - alert: OrdersTLSCertificateNearExpiry
          expr: min by (namespace, pod, role) (orders_tls_certificate_seconds_left{job="{{ $job }}", namespace="{{ $ns }}"}) < {{ $r.certSecondsLeftBelow }}
          for: 5m
          labels:
            severity: critical
            service: {{ $identity }}
          annotations:
            summary: "{{ $identity }}: client certificate close to expiry"
            description: "Pod {{ "{{" }} $labels.pod {{ "}}" }} has {{ "{{" }} $value | humanizeDuration {{ "}}" }} left on its {{ "{{" }} $labels.role {{ "}}" }} certificate and has not renewed it (due at two thirds of its life): check Vault's PKI (pki-orders) and the worker's log (tls.renew_failed); Temporal refuses it once it expires."
        {{- end }}
        {{- if .database }}
        - alert: OrdersDbLeaseSecondsLeftLow
          expr: min by (namespace, pod, db_role) (orders_db_lease_seconds_left{job="{{ $job }}", namespace="{{ $ns }}"}) < {{ $r.leaseSecondsLeftBelow }}
          for: 2m
          labels:
            severity: critical
            service: {{ $identity }}
          annotations:
            summary: "{{ $identity }}: database lease close to its end"
            description: "Pod {{ "{{" }} $labels.pod {{ "}}" }}, role {{ "{{" }} $labels.db_role {{ "}}" }}: {{ "{{" }} $value | humanizeDuration {{ "}}" }} left and no new credential: check Vault's database engine and orders_db_lease_rotation_failures_total."
        {{- end }}
        - alert: OrdersReadinessFailing
          expr: sum by (namespace, pod) (kube_pod_status_ready{namespace="{{ $ns }}", condition="false", pod=~"{{ $identity }}-.*"}) > 0
          for: 5m
          labels:
            severity: warning
            service: {{ $identity }}
          annotations:
            summary: "{{ $identity }}: a pod is not ready"
            description: "Pod {{ "{{" }} $labels.pod {{ "}}" }} has failed /readyz for 5 minutes (Temporal, Vault or its database): GET /readyz on port metrics names the failing check."
        {{- if ne $ctx.Chart.Name "orchestrator" }}
        - alert: OrdersActivityFailureRate
          expr: |
            sum by (namespace, activity) (rate(orders_activity_outcomes_total{job="{{ $job }}", namespace="{{ $ns }}", outcome="error"}[5m]))
              / sum by (namespace, activity) (rate(orders_activity_outcomes_total{job="{{ $job }}", namespace="{{ $ns }}"}[5m]))
              > {{ $r.activityErrorRatioAbove }}
          for: 10m
          labels:
            severity: warning
            service: {{ $identity }}
          annotations:
            summary: "{{ $identity }}: activity {{ "{{" }} $labels.activity {{ "}}" }} failing"
            description: "{{ "{{" }} $value | humanizePercentage {{ "}}" }} of executions end in an infrastructure error (Temporal retries them): see error_type in orders_activity_outcomes_total and the worker's log."
        {{- end }}
        {{- if eq $ctx.Chart.Name "payment" }}
        - alert: OrdersCompensationStuck
          expr: increase(orders_payment_refunds_total{job="{{ $job }}", namespace="{{ $ns }}", outcome="unfinished"}[15m]) > 0
          for: 15m
          labels:
            severity: critical
            service: {{ $identity }}
          annotations:
            summary: "{{ $identity }}: refunds keep ending unfinished"
            description: "Refunds have ended unfinished (the provider could not be asked or did not answer) for 30 minutes: money may be held; check the payment provider and the payment worker's log."
        {{- end }}
{{- end -}}
