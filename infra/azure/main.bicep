// whatsapp-voice-bridge on Azure Container Apps, as a fleet.
//
// One bridge container per replica; the webhook is public HTTPS through ACA ingress, which hands
// each webhook to any ready replica; the replicas share call state through Azure Managed Redis
// (TLS; its key in Key Vault). Media is WebRTC over UDP that the bridge dials *out* to Meta's
// relays (ACA ingress carries no UDP, and none is needed). Replicas scale on CPU, which tracks
// live calls; the target is derived from the calls a replica may carry and the measured cost of
// a call, so a replica is added well before one is full (infra/README.md has the arithmetic).
// Each bridge also admits calls by its own measured headroom (ADMISSION=headroom): on a slower
// host it refuses before its CPU reaches ADMISSION_CPU_TARGET of its core, whatever
// maxCallsPerReplica allows, and the scale target sits well below that CPU.
// A collector beside each bridge scrapes its metrics into Azure Monitor managed Prometheus,
// where the alert rules below run.

@description('Name prefix of every resource.')
param name string = 'wa-voice-bridge'

@description('Azure region.')
param location string = resourceGroup().location

@description('Container image, e.g. myregistry.azurecr.io/whatsapp-voice-bridge:1.0.0.')
param image string

@description('Azure Container Registry holding the image, in this resource group (pulled with the managed identity, which gets AcrPull on it).')
param registryName string

@description('Key Vault holding the secrets (names below), in this resource group; the managed identity gets Key Vault Secrets User on it.')
param keyVaultName string

@description('Graph id of the business phone number.')
param whatsappPhoneNumberId string

@description('Graph API version.')
param whatsappGraphVersion string = 'v23.0'

@description('Realtime model (OpenAI) or leave the Azure settings below to use Azure OpenAI.')
param openAiRealtimeModel string = 'gpt-realtime'

@description('Azure OpenAI endpoint; empty uses OpenAI.')
param azureOpenAiEndpoint string = ''

@description('Azure OpenAI realtime deployment name.')
param azureOpenAiDeployment string = ''

@description('Model that transcribes the caller (OPENAI_TRANSCRIBE_MODEL); on Azure the name of your transcription deployment. Empty: gpt-4o-mini-transcribe on OpenAI, no transcription on Azure.')
param transcribeModel string = ''

@description('Supabase project URL: the store shared by all replicas (the embedded store is per replica).')
param supabaseUrl string

@description('Approved WhatsApp message template (one body parameter: the reminder text) for reminders outside the 24-hour customer-service window; empty: free-form messages inside it only.')
param reminderTemplate string = ''

@description('Language code of reminderTemplate.')
param reminderTemplateLanguage string = 'en_US'

@description('Calls one replica serves at once at most (MAX_CONCURRENT_CALLS). One core sent every frame on time at 100 calls in the load harness on the faster machines; a slower host is held below this by the bridge\'s own headroom admission (ADMISSION=headroom).')
@minValue(1)
@maxValue(200)
param maxCallsPerReplica int = 80

@description('CPU one call costs, in thousandths of a core: the load harness measured 0.45-0.9 % of a core per call depending on the host (docs/BENCHMARKS.md); 9 is the slower hosts\' figure.')
@minValue(1)
@maxValue(100)
param cpuPerCallPermille int = 9

@description('A replica is added when the replicas carry on average this share (%) of maxCallsPerReplica, so new calls still find room while it starts.')
@minValue(20)
@maxValue(90)
param scaleOutAtPercentOfMax int = 60

@description('Seconds live calls may go on after SIGTERM (DRAIN_TIMEOUT). The grace period is 30 s more, and Container Apps allows at most 600 s.')
@minValue(5)
@maxValue(570)
param drainTimeoutSeconds int = 300

@description('Azure Managed Redis SKU for the shared call state (a few KB per call).')
param redisSku string = 'Balanced_B0'

@description('OpenTelemetry Collector (contrib) image of the metrics sidecar.')
param collectorImage string = 'otel/opentelemetry-collector-contrib:0.115.1'

@description('Who is mailed when an alert fires; empty: the alerts fire in Azure Monitor only.')
param alertEmail string = ''

@minValue(1)
param minReplicas int = 1

@maxValue(30)
param maxReplicas int = 10

var keyVaultUrl = 'https://${keyVaultName}${environment().suffixes.keyvaultDns}/secrets'

// The bridge's metrics port; the collector beside it scrapes it.
var metricsPort = 9090
// CPU of one replica, in thousandths of a core: the bridge's core and the collector's quarter.
var bridgeCpuMilli = 1000
var collectorCpuMilli = 250
var replicaCpuMilli = bridgeCpuMilli + collectorCpuMilli
// The scale rule's target: the utilisation (of the replica's whole CPU request, as the
// platform measures it) at which the average replica carries scaleOutAtPercentOfMax of its
// calls. 80 calls x 60 % x 9/1000 of a core = 0.432 cores = 34 % of 1.25 cores.
var targetCpuPercent = max(10, min(90, (maxCallsPerReplica * scaleOutAtPercentOfMax * cpuPerCallPermille) / replicaCpuMilli))
resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-identity'
  location: location
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

// Built-in roles: Key Vault Secrets User (read secret values) and AcrPull.
var keyVaultSecretsUserRole = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '4633458b-17de-408a-b874-0445c86b69e6')
var acrPullRole = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '7f951dda-4ed3-4680-a7ca-43fe172d538d')

// The first revision reads its secrets and pulls its image with the identity, so both grants
// must exist before the app does.
resource secretsAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, identity.id, keyVaultSecretsUserRole)
  scope: keyVault
  properties: {
    roleDefinitionId: keyVaultSecretsUserRole
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource imagePull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, identity.id, acrPullRole)
  scope: registry
  properties: {
    roleDefinitionId: acrPullRole
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The fleet's shared call state: claims, tombstones, forwarded events (REDIS_URL).
resource redis 'Microsoft.Cache/redisEnterprise@2025-04-01' = {
  name: '${name}-redis'
  location: location
  sku: {
    name: redisSku
  }
  properties: {
    highAvailability: 'Enabled'
    minimumTlsVersion: '1.2'
  }
}

resource redisDatabase 'Microsoft.Cache/redisEnterprise/databases@2025-04-01' = {
  parent: redis
  name: 'default'
  properties: {
    // TLS only. Every key of the fleet shares one hash tag, so clustering does not matter to
    // its scripts.
    clientProtocol: 'Encrypted'
    port: 10000
    clusteringPolicy: 'EnterpriseCluster'
    // The fleet's keys all expire by themselves; none may be evicted early.
    evictionPolicy: 'NoEviction'
    accessKeysAuthentication: 'Enabled'
  }
}

// REDIS_URL, with the access key, kept in Key Vault like the other secrets: the app reads it
// through its identity, and it appears in no setting or log.
resource redisUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'redis-url'
  properties: {
    contentType: 'text/plain'
    value: 'rediss://:${redisDatabase.listKeys().primaryKey}@${redis.properties.hostName}:10000'
  }
}

// Azure Monitor managed Prometheus: the workspace, and the data collection endpoint and rule the
// collectors remote-write through, with the identity allowed to publish.
resource monitorWorkspace 'Microsoft.Monitor/accounts@2023-04-03' = {
  name: '${name}-prometheus'
  location: location
}

resource metricsEndpoint 'Microsoft.Insights/dataCollectionEndpoints@2022-06-01' = {
  name: '${name}-metrics-dce'
  location: location
  properties: {
    networkAcls: {
      publicNetworkAccess: 'Enabled'
    }
  }
}

resource metricsRule 'Microsoft.Insights/dataCollectionRules@2022-06-01' = {
  name: '${name}-metrics-dcr'
  location: location
  properties: {
    dataCollectionEndpointId: metricsEndpoint.id
    dataSources: {
      prometheusForwarder: [
        {
          name: 'bridgeMetrics'
          streams: [
            'Microsoft-PrometheusMetrics'
          ]
          labelIncludeFilter: {}
        }
      ]
    }
    destinations: {
      monitoringAccounts: [
        {
          accountResourceId: monitorWorkspace.id
          name: 'prometheus'
        }
      ]
    }
    dataFlows: [
      {
        streams: [
          'Microsoft-PrometheusMetrics'
        ]
        destinations: [
          'prometheus'
        ]
      }
    ]
  }
}

// Built-in role: Monitoring Metrics Publisher.
var metricsPublisherRole = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '3913510d-42f4-4e42-8a64-420c390055eb')

resource metricsPublish 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(metricsRule.id, identity.id, metricsPublisherRole)
  scope: metricsRule
  properties: {
    roleDefinitionId: metricsPublisherRole
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

var remoteWriteUrl = '${metricsEndpoint.properties.metricsIngestion.endpoint}/dataCollectionRules/${metricsRule.properties.immutableId}/streams/Microsoft-PrometheusMetrics/api/v1/write?api-version=2023-04-24'

// The collector's configuration (OpenTelemetry Collector, contrib): scrape the bridge beside it
// every 15 s, label the series with the replica, and remote-write them with the identity.
var collectorConfig = replace(replace('''
extensions:
  azureauth:
    managed_identity:
      client_id: ${env:AZURE_CLIENT_ID}
    scopes:
      - https://monitor.azure.com/.default
receivers:
  prometheus:
    config:
      scrape_configs:
        - job_name: whatsapp-voice-bridge
          scrape_interval: 15s
          static_configs:
            - targets: ["localhost:__METRICS_PORT__"]
              labels:
                replica: ${env:CONTAINER_APP_REPLICA_NAME}
processors:
  batch: {}
exporters:
  prometheusremotewrite:
    endpoint: __REMOTE_WRITE_URL__
    auth:
      authenticator: azureauth
service:
  extensions: [azureauth]
  pipelines:
    metrics:
      receivers: [prometheus]
      processors: [batch]
      exporters: [prometheusremotewrite]
''', '__REMOTE_WRITE_URL__', remoteWriteUrl), '__METRICS_PORT__', string(metricsPort))

resource logs 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: '${name}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource environmentResource 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${name}-env'
  location: location
  properties: {
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
  }
}

resource app 'Microsoft.App/containerApps@2024-03-01' = {
  name: name
  location: location
  dependsOn: [
    secretsAccess
    imagePull
    metricsPublish
  ]
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    managedEnvironmentId: environmentResource.id
    configuration: {
      // Single revision mode: a new revision takes traffic once ready; the old one drains.
      activeRevisionsMode: 'Single'
      ingress: {
        external: true
        targetPort: 8080
        transport: 'http'
        allowInsecure: false
      }
      registries: [
        {
          server: registry.properties.loginServer
          identity: identity.id
        }
      ]
      // Secrets come from Key Vault through the app's managed identity; none is in the template.
      secrets: [
        {
          name: 'whatsapp-app-secret'
          keyVaultUrl: '${keyVaultUrl}/whatsapp-app-secret'
          identity: identity.id
        }
        {
          name: 'whatsapp-verify-token'
          keyVaultUrl: '${keyVaultUrl}/whatsapp-verify-token'
          identity: identity.id
        }
        {
          name: 'whatsapp-access-token'
          keyVaultUrl: '${keyVaultUrl}/whatsapp-access-token'
          identity: identity.id
        }
        {
          name: 'ai-api-key'
          keyVaultUrl: '${keyVaultUrl}/ai-api-key'
          identity: identity.id
        }
        {
          name: 'supabase-service-role-key'
          keyVaultUrl: '${keyVaultUrl}/supabase-service-role-key'
          identity: identity.id
        }
        {
          name: 'admin-token'
          keyVaultUrl: '${keyVaultUrl}/admin-token'
          identity: identity.id
        }
        {
          name: 'redis-url'
          keyVaultUrl: redisUrlSecret.properties.secretUri
          identity: identity.id
        }
      ]
    }
    template: {
      // Longer than DRAIN_TIMEOUT so a replica being replaced can finish its calls.
      terminationGracePeriodSeconds: drainTimeoutSeconds + 30
      containers: [
        {
          name: 'bridge'
          image: image
          // One core per replica: with one CPU the bridge runs a single-threaded runtime, which
          // measured 20 % cheaper per call than a multi-threaded one; scale out, not up.
          resources: {
            cpu: json('1.0')
            memory: '2Gi'
          }
          // An empty AZURE_OPENAI_ENDPOINT means OpenAI; one UDP port per call from WEBRTC_UDP_PORTS.
          env: [
            {
              name: 'PORT'
              value: '8080'
            }
            {
              name: 'METRICS_PORT'
              value: string(metricsPort)
            }
            {
              name: 'LOG_FORMAT'
              value: 'json'
            }
            {
              name: 'MAX_CONCURRENT_CALLS'
              value: string(maxCallsPerReplica)
            }
            {
              // Hosts differ by 2x: a call is also refused when admitting it would push this
              // replica past 80 % of its core or its frames past a 5 ms send delay.
              name: 'ADMISSION'
              value: 'headroom'
            }
            {
              name: 'ADMISSION_CPU_TARGET'
              value: '0.7'
            }
            {
              name: 'DRAIN_TIMEOUT'
              value: '${drainTimeoutSeconds}s'
            }
            {
              name: 'WHATSAPP_PHONE_NUMBER_ID'
              value: whatsappPhoneNumberId
            }
            {
              name: 'WHATSAPP_GRAPH_VERSION'
              value: whatsappGraphVersion
            }
            {
              name: 'WHATSAPP_APP_SECRET'
              secretRef: 'whatsapp-app-secret'
            }
            {
              name: 'WHATSAPP_VERIFY_TOKEN'
              secretRef: 'whatsapp-verify-token'
            }
            {
              name: 'WHATSAPP_ACCESS_TOKEN'
              secretRef: 'whatsapp-access-token'
            }
            {
              name: 'OPENAI_API_KEY'
              secretRef: 'ai-api-key'
            }
            {
              name: 'OPENAI_REALTIME_MODEL'
              value: openAiRealtimeModel
            }
            {
              name: 'AZURE_OPENAI_ENDPOINT'
              value: azureOpenAiEndpoint
            }
            {
              name: 'AZURE_OPENAI_API_KEY'
              secretRef: 'ai-api-key'
            }
            {
              name: 'AZURE_OPENAI_DEPLOYMENT'
              value: azureOpenAiDeployment
            }
            {
              name: 'OPENAI_TRANSCRIBE_MODEL'
              value: transcribeModel
            }
            {
              name: 'SUPABASE_URL'
              value: supabaseUrl
            }
            {
              name: 'SUPABASE_SERVICE_ROLE_KEY'
              secretRef: 'supabase-service-role-key'
            }
            {
              name: 'ADMIN_TOKEN'
              secretRef: 'admin-token'
            }
            {
              name: 'WEBRTC_UDP_PORTS'
              value: '40000-40999'
            }
            {
              name: 'STUN_URLS'
              value: 'stun:stun.l.google.com:19302'
            }
            {
              // The fleet's shared state; each replica names itself after its container
              // (CONTAINER_APP_REPLICA_NAME) with a random suffix.
              name: 'REDIS_URL'
              secretRef: 'redis-url'
            }
            {
              name: 'REDIS_KEY_PREFIX'
              value: name
            }
            {
              // Every replica delivers due reminders; the store's claim gives each to one.
              name: 'REMINDER_TEMPLATE'
              value: reminderTemplate
            }
            {
              name: 'REMINDER_TEMPLATE_LANGUAGE'
              value: reminderTemplateLanguage
            }
          ]
          probes: [
            {
              type: 'Startup'
              httpGet: {
                path: '/health'
                port: 8080
              }
              periodSeconds: 2
              failureThreshold: 30
            }
            {
              type: 'Liveness'
              httpGet: {
                path: '/health'
                port: 8080
              }
              periodSeconds: 10
              failureThreshold: 3
            }
            {
              // 503 only while draining. A full replica stays ready: its own calls' webhooks
              // must reach it (or another replica, which forwards them), and it declines new
              // calls itself with reject.
              type: 'Readiness'
              httpGet: {
                path: '/ready'
                port: 8080
              }
              periodSeconds: 2
              failureThreshold: 1
              successThreshold: 1
            }
          ]
        }
        {
          // Scrapes the bridge beside it (METRICS_PORT, not exposed by the ingress) into Azure
          // Monitor managed Prometheus, where the dashboard and the alert rules read it.
          name: 'metrics-collector'
          image: collectorImage
          args: [
            '--config=env:OTEL_CONFIG'
          ]
          resources: {
            cpu: json('0.25')
            memory: '0.5Gi'
          }
          env: [
            {
              name: 'OTEL_CONFIG'
              value: collectorConfig
            }
            {
              name: 'AZURE_CLIENT_ID'
              value: identity.properties.clientId
            }
          ]
        }
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            // CPU follows live calls closely (the codec is most of a call's cost), and the
            // platform measures it itself. The target is where the average replica carries
            // scaleOutAtPercentOfMax of its calls (see targetCpuPercent above).
            name: 'cpu-per-replica'
            custom: {
              type: 'cpu'
              metadata: {
                type: 'Utilization'
                value: string(targetCpuPercent)
              }
            }
          }
        ]
      }
    }
  }
}

// Someone to tell when an alert fires (optional).
resource alertGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: '${name}-alerts'
  location: 'global'
  properties: {
    groupShortName: 'wabridge'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var alertActions = empty(alertEmail) ? [] : [
  {
    actionGroupId: alertGroup.id
  }
]

// The fleet's alerts, evaluated by Azure Monitor on the managed Prometheus data.
resource alertRules 'Microsoft.AlertsManagement/prometheusRuleGroups@2023-03-01' = {
  name: '${name}-alerts'
  location: location
  properties: {
    description: 'whatsapp-voice-bridge: calls not answered, AI failures, late audio, capacity, Redis'
    scopes: [
      monitorWorkspace.id
    ]
    enabled: true
    interval: 'PT1M'
    rules: [
      {
        alert: 'WebhooksButNoCallsAnswered'
        expression: 'sum(increase(whatsapp_bridge_webhook_requests_total{result="ok"}[15m])) > 5 and sum(increase(whatsapp_bridge_call_setup_seconds_count[15m])) == 0'
        for: 'PT5M'
        severity: 1
        annotations: {
          description: 'Webhooks keep arriving but no call was answered for 15 minutes.'
        }
        actions: alertActions
      }
      {
        alert: 'AiConnectFailures'
        expression: 'sum(increase(whatsapp_bridge_calls_total{outcome="ai_failed"}[10m])) > 3'
        for: 'PT5M'
        severity: 2
        annotations: {
          description: 'Calls are ending because the AI session failed or could not be opened.'
        }
        actions: alertActions
      }
      {
        alert: 'FramesSentLate'
        expression: 'histogram_quantile(0.99, sum by (le) (rate(whatsapp_bridge_frame_send_delay_seconds_bucket[5m]))) > 0.01'
        for: 'PT10M'
        severity: 2
        annotations: {
          description: 'The AI voice leaves more than 10 ms after its slot (p99): replicas are overloaded.'
        }
        actions: alertActions
      }
      {
        alert: 'CapacityAbove90Percent'
        expression: 'sum(whatsapp_bridge_active_calls) / (sum(whatsapp_bridge_active_calls) + sum(whatsapp_bridge_headroom_calls)) > 0.9'
        for: 'PT5M'
        severity: 2
        annotations: {
          description: 'The fleet carries over 90 % of the calls it can (its live calls and those the replicas estimate they can still take, by their measured headroom); new callers may be refused.'
        }
        actions: alertActions
      }
      {
        alert: 'RedisDegraded'
        expression: 'max(whatsapp_bridge_fleet_degraded) > 0'
        for: 'PT2M'
        severity: 1
        annotations: {
          description: 'A replica cannot reach Redis: calls go on, but duplicates, terminates and one-call-per-caller are only known per replica.'
        }
        actions: alertActions
      }
    ]
  }
}

output webhookUrl string = 'https://${app.properties.configuration.ingress.fqdn}/webhook'
output identityPrincipalId string = identity.properties.principalId
output prometheusQueryEndpoint string = monitorWorkspace.properties.metrics.prometheusQueryEndpoint
output scaleOutCpuPercent int = targetCpuPercent
