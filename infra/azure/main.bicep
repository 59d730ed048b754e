// whatsapp-voice-bridge on Azure Container Apps.
//
// One container per replica; the webhook is public HTTPS through ACA ingress; media is WebRTC
// over UDP that the bridge dials *out* to Meta's relays (ACA ingress carries no UDP, and none is
// needed). Replicas scale on CPU, which tracks live calls (about 1 % of a core per call, measured
// with `whatsapp-voice-bridge loadtest`); HTTP concurrency would count webhooks, not calls.

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

@description('Supabase project URL: the store shared by all replicas (the embedded store is per replica).')
param supabaseUrl string

@description('Calls one replica serves at once (MAX_CONCURRENT_CALLS). One core sent every frame on time at 100 calls (73 % busy) in the load harness; 80 leaves headroom.')
@minValue(1)
param maxCallsPerReplica int = 80

@description('Average CPU utilisation (% of the one core of a replica) at which a replica is added. The load harness measured about 0.7 % of a core per call and every frame sent on time at 100 calls (73 % of the core), so 55 % is about 70 live calls.')
@minValue(10)
@maxValue(90)
param targetCpuPercent int = 55

@description('Seconds live calls may go on after SIGTERM (DRAIN_TIMEOUT).')
@minValue(5)
param drainTimeoutSeconds int = 300

@minValue(1)
param minReplicas int = 1

@maxValue(30)
param maxReplicas int = 10

var keyVaultUrl = 'https://${keyVaultName}${environment().suffixes.keyvaultDns}/secrets'
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
              value: '9090'
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
              // 503 while draining or full: no new webhooks are routed here.
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
      ]
      scale: {
        minReplicas: minReplicas
        maxReplicas: maxReplicas
        rules: [
          {
            // CPU follows live calls closely (the codec is most of a call's cost), and the
            // platform measures it itself: no metrics pipeline is needed for scaling.
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

output webhookUrl string = 'https://${app.properties.configuration.ingress.fqdn}/webhook'
output identityPrincipalId string = identity.properties.principalId
