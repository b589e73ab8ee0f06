/** Settings of an eks-remedy deployment: the CDK twin of the SAM template's parameters. */
export interface EksRemedyConfig {
  /** EKS clusters eks-remedy may act on: access entries and IAM scope for each. */
  readonly clusterNames: string[];
  /** Decide and report, change nothing. */
  readonly dryRun: boolean;
  /** What to do when a PodDisruptionBudget still blocks a pod at the interruption deadline. */
  readonly deadlinePolicy: 'respect-pdb' | 'delete';
  /** Drain, not only cordon, on a rebalance recommendation. */
  readonly drainOnRebalance: boolean;
  /** pending-pods may roll managed node groups (eks:UpdateNodegroupVersion). */
  readonly allowNodeReplacement: boolean;
  /**
   * pending-pods may turn on Security Groups for Pods prerequisites (ENABLE_POD_ENI, and
   * AmazonEKSVPCResourceController on the cluster role).
   */
  readonly allowPodEni: boolean;
  /** volume-attach may create Pod Identity roles under /eks-remedy/ with a CSI driver policy. */
  readonly allowRoleCreation: boolean;
  /** Existing roles volume-attach may pass to Pod Identity associations. */
  readonly podIdentityRoleArns: string[];
  /** volume-attach may force-detach a claim's volume from a stopped instance whose node is gone. */
  readonly allowForceDetach: boolean;
  readonly logLevel: 'error' | 'warn' | 'info' | 'debug' | 'trace';
  /** Existing CloudWatch alarms whose ALARM state runs pending-pods. */
  readonly pendingPodsAlarmNames: string[];
  /** Create a Container Insights pod_status_pending alarm per cluster that runs pending-pods. */
  readonly createPendingPodsAlarm: boolean;
  /** Schedule expression of a periodic pending-pods check; empty: none. */
  readonly pendingPodsSchedule: string;
  /** Schedule expression of the volume-attach sweep; empty: none. */
  readonly sweepSchedule: string;
  /** Existing CloudWatch alarms whose ALARM state runs volume-attach. */
  readonly volumeAttachAlarmNames: string[];
  /** Slack channel for the reports topic; both ids or neither. */
  readonly slackWorkspaceId: string;
  readonly slackChannelId: string;
  /** Folder holding `<function>/bootstrap.zip` (infra/build.sh links it to infra/dist). */
  readonly assetDir: string;
}

/** The defaults of the SAM template's parameters; the drift test holds the two equal. */
export const DEFAULTS: Omit<EksRemedyConfig, 'clusterNames' | 'assetDir'> = {
  dryRun: true,
  deadlinePolicy: 'respect-pdb',
  drainOnRebalance: false,
  allowNodeReplacement: false,
  allowPodEni: false,
  allowRoleCreation: false,
  podIdentityRoleArns: [],
  allowForceDetach: false,
  logLevel: 'info',
  pendingPodsAlarmNames: [],
  createPendingPodsAlarm: false,
  pendingPodsSchedule: '',
  sweepSchedule: 'rate(10 minutes)',
  volumeAttachAlarmNames: [],
  slackWorkspaceId: '',
  slackChannelId: '',
};

const CLUSTER_NAME = /^[0-9A-Za-z][A-Za-z0-9\-_]*$/;
const ROLE_ARN = /^arn:aws[a-z-]*:iam::\d{12}:role\/.+$/;
const LOG_LEVELS = ['error', 'warn', 'info', 'debug', 'trace'];

/**
 * Reads the configuration from CDK context values named like the SAM parameters
 * (`cdk deploy -c ClusterNames=blue,green -c DryRun=false`).
 */
export function configFromContext(
  get: (key: string) => unknown,
  defaultAssetDir: string,
): EksRemedyConfig {
  const text = (key: string, fallback: string): string => {
    const value = get(key);
    return value === undefined || value === null ? fallback : String(value).trim();
  };
  const list = (key: string): string[] => {
    const value = get(key);
    const items = Array.isArray(value) ? value.map(String) : text(key, '').split(',');
    return items.map((item) => item.trim()).filter((item) => item !== '');
  };
  const flag = (key: string, fallback: boolean): boolean => {
    const value = text(key, String(fallback));
    if (value !== 'true' && value !== 'false') {
      throw new Error(`context ${key} must be true or false, not "${value}"`);
    }
    return value === 'true';
  };
  const oneOf = <T extends string>(key: string, allowed: readonly string[], fallback: T): T => {
    const value = text(key, fallback);
    if (!allowed.includes(value)) {
      throw new Error(`context ${key} must be one of ${allowed.join(', ')}, not "${value}"`);
    }
    return value as T;
  };

  const clusterNames = list('ClusterNames');
  if (clusterNames.length === 0) {
    throw new Error('context ClusterNames is required, for example -c ClusterNames=blue,green');
  }
  for (const name of clusterNames) {
    if (!CLUSTER_NAME.test(name)) {
      throw new Error(`context ClusterNames: "${name}" is not an EKS cluster name`);
    }
  }
  const podIdentityRoleArns = list('PodIdentityRoleArns');
  for (const arn of podIdentityRoleArns) {
    if (!ROLE_ARN.test(arn)) {
      throw new Error(`context PodIdentityRoleArns: "${arn}" is not an IAM role ARN`);
    }
  }

  return {
    clusterNames,
    dryRun: flag('DryRun', DEFAULTS.dryRun),
    deadlinePolicy: oneOf('DeadlinePolicy', ['respect-pdb', 'delete'], DEFAULTS.deadlinePolicy),
    drainOnRebalance: flag('DrainOnRebalance', DEFAULTS.drainOnRebalance),
    allowNodeReplacement: flag('AllowNodeReplacement', DEFAULTS.allowNodeReplacement),
    allowPodEni: flag('AllowPodEni', DEFAULTS.allowPodEni),
    allowRoleCreation: flag('AllowRoleCreation', DEFAULTS.allowRoleCreation),
    podIdentityRoleArns,
    allowForceDetach: flag('AllowForceDetach', DEFAULTS.allowForceDetach),
    logLevel: oneOf('LogLevel', LOG_LEVELS, DEFAULTS.logLevel),
    pendingPodsAlarmNames: list('PendingPodsAlarmNames'),
    createPendingPodsAlarm: flag('CreatePendingPodsAlarm', DEFAULTS.createPendingPodsAlarm),
    pendingPodsSchedule: text('PendingPodsSchedule', DEFAULTS.pendingPodsSchedule),
    sweepSchedule: text('SweepSchedule', DEFAULTS.sweepSchedule),
    volumeAttachAlarmNames: list('VolumeAttachAlarmNames'),
    slackWorkspaceId: text('SlackWorkspaceId', DEFAULTS.slackWorkspaceId),
    slackChannelId: text('SlackChannelId', DEFAULTS.slackChannelId),
    assetDir: text('AssetDir', defaultAssetDir),
  };
}
