{{/* Names, labels and the checks every render makes. */}}

{{- define "embmon.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "embmon.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "embmon.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "embmon.selectorLabels" -}}
app.kubernetes.io/name: {{ include "embmon.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "embmon.labels" -}}
helm.sh/chart: {{ include "embmon.chart" . }}
{{ include "embmon.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "embmon.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "embmon.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "embmon.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "embmon.metricsPort" -}}
{{- default 9808 .Values.config.metrics_port -}}
{{- end -}}

{{/* Where the agent reads its reference. */}}
{{- define "embmon.referencePath" -}}
{{- if .Values.reference.url -}}/var/lib/embmon-reference{{- else -}}/etc/embmon/reference{{- end -}}
{{- end -}}

{{/*
The Deployments this layout renders: a list of dicts {component, role, replicas, resources,
serves (drift metrics and windows), store (the /var/lib/embmon volume is the PVC)}.
*/}}
{{- define "embmon.components" -}}
{{- $v := .Values -}}
{{- $list := list -}}
{{- if eq $v.layout "single" -}}
{{- $list = append $list (dict "component" "agent" "role" "all" "replicas" 1 "resources" $v.single.resources "serves" true) -}}
{{- else -}}
{{- $list = append $list (dict "component" "collector" "role" "collector" "replicas" ($v.collectors.replicas | int) "resources" $v.collectors.resources "serves" false "autoscaled" $v.collectors.autoscaling.enabled) -}}
{{- $list = append $list (dict "component" "evaluator" "role" "evaluator" "replicas" ($v.evaluators.replicas | int) "resources" $v.evaluators.resources "serves" true) -}}
{{- end -}}
{{- toYaml (dict "items" $list) -}}
{{- end -}}

{{/* The agent's settings file for one role: the user's config plus what the chart sets. */}}
{{- define "embmon.settings" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $s := deepCopy $v.config -}}
{{- $_ := set $s "role" .role -}}
{{- $_ = set $s "reference" (include "embmon.referencePath" $root) -}}
{{- $_ = set $s "out" "/var/lib/embmon" -}}
{{- if $v.kafka.sasl.passwordSecret.name -}}
{{- $_ = set $s "sasl_plain_password_file" "/etc/embmon/kafka/password" -}}
{{- end -}}
{{- if $v.kafka.tls.secret -}}
{{- if $v.kafka.tls.ca -}}{{- $_ = set $s "ssl_cafile" "/etc/embmon/kafka/ca.crt" -}}{{- end -}}
{{- if $v.kafka.tls.cert -}}{{- $_ = set $s "ssl_certfile" "/etc/embmon/kafka/client.crt" -}}{{- end -}}
{{- if $v.kafka.tls.key -}}{{- $_ = set $s "ssl_keyfile" "/etc/embmon/kafka/client.key" -}}{{- end -}}
{{- end -}}
{{- with $v.metrics.webConfigSecret -}}
{{- $_ = set $s "metrics_web_config" (printf "/etc/embmon/web/%s" $v.metrics.webConfigKey) -}}
{{- end -}}
{{- toYaml $s -}}
{{- end -}}

{{/* Checks the schema cannot express; each fails the render with what to change. */}}
{{- define "embmon.validate" -}}
{{- $v := .Values -}}
{{- if hasKey $v.config "sasl_plain_password" -}}
{{- fail "config.sasl_plain_password: a plain password is never put in the ConfigMap; name an existing Secret in kafka.sasl.passwordSecret (name, key) instead" -}}
{{- end -}}
{{- range $key := list "role" "reference" "out" -}}
{{- if hasKey $v.config $key -}}
{{- fail (printf "config.%s is set by the chart (role: from layout; reference: from reference.configMap or reference.url; out: /var/lib/embmon); remove it from config" $key) -}}
{{- end -}}
{{- end -}}
{{- if $v.config.until_end -}}
{{- fail "config.until_end: true makes embmon exit at the end offsets seen at start; a Deployment would restart it for ever (run a backfill as a Job instead)" -}}
{{- end -}}
{{- if and $v.reference.configMap $v.reference.url -}}
{{- fail "reference: set exactly one of reference.configMap and reference.url, not both (set reference.configMap to \"\" to use reference.url)" -}}
{{- end -}}
{{- if not (or $v.reference.configMap $v.reference.url) -}}
{{- fail "reference: set exactly one of reference.configMap (an existing ConfigMap of the reference files) and reference.url (with reference.sha256)" -}}
{{- end -}}
{{- if and $v.reference.url (not $v.reference.sha256) -}}
{{- fail "reference.sha256 is required with reference.url (the sha256 of the .tar.gz)" -}}
{{- end -}}
{{- if eq $v.layout "scaled" -}}
{{- if not $v.config.profiles_topic -}}
{{- fail "layout scaled needs config.profiles_topic (the topic of partial profiles between collectors and evaluators)" -}}
{{- end -}}
{{- if and (hasKey $v.config "time_mode") (ne $v.config.time_mode "event") -}}
{{- fail "layout scaled needs config.time_mode event (collectors and evaluators cut windows by event time)" -}}
{{- end -}}
{{- if and $v.persistence.enabled (gt ($v.evaluators.replicas | int) 1) -}}
{{- fail "persistence.enabled with evaluators.replicas > 1: one PersistentVolumeClaim cannot hold several evaluators' windows; run 1 evaluator, or disable persistence" -}}
{{- end -}}
{{- $as := $v.collectors.autoscaling -}}
{{- if $as.enabled -}}
{{- if lt ($as.partitions | int) 1 -}}
{{- fail "collectors.autoscaling.partitions is required with collectors.autoscaling.enabled: the inference topic's partition count" -}}
{{- end -}}
{{- if not $v.config.topics -}}
{{- fail "collectors.autoscaling.enabled needs config.topics (one kafka trigger per topic)" -}}
{{- end -}}
{{- if gt ($as.maxReplicas | int) ($as.partitions | int) -}}
{{- fail (printf "collectors.autoscaling.maxReplicas (%d) exceeds collectors.autoscaling.partitions (%d): a collector beyond the topic's partitions holds none" ($as.maxReplicas | int) ($as.partitions | int)) -}}
{{- end -}}
{{- if gt ($as.minReplicas | int) ($as.maxReplicas | int) -}}
{{- fail "collectors.autoscaling.minReplicas exceeds collectors.autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}
{{- else if $v.collectors.autoscaling.enabled -}}
{{- fail "collectors.autoscaling.enabled needs layout scaled (the single layout runs one process)" -}}
{{- end -}}
{{- if and $v.kafka.tls.secret (not (or $v.kafka.tls.ca $v.kafka.tls.cert $v.kafka.tls.key)) -}}
{{- fail "kafka.tls.secret is set but none of kafka.tls.ca, cert, key names a key in it" -}}
{{- end -}}
{{- if ne (empty $v.kafka.tls.cert) (empty $v.kafka.tls.key) -}}
{{- fail "kafka.tls.cert and kafka.tls.key go together (a client certificate and its key)" -}}
{{- end -}}
{{- end -}}
