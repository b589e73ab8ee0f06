import * as fs from 'node:fs';
import * as path from 'node:path';
import { Aws, CfnOutput, Duration, Fn, RemovalPolicy, Stack, StackProps } from 'aws-cdk-lib';
import * as chatbot from 'aws-cdk-lib/aws-chatbot';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as cloudwatchActions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as eks from 'aws-cdk-lib/aws-eks';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { EksRemedyConfig } from './config';

/** The Kubernetes group infra/k8s/rbac.yaml binds; every function role is mapped to it. */
export const KUBERNETES_GROUP = 'eks-remediators';

/** How EventBridge retries a target before parking the event in the dead-letter queue. */
const RULE_RETRY_ATTEMPTS = 8;
const RULE_MAX_EVENT_AGE = Duration.hours(1);

/** How Lambda retries a failed asynchronous invocation before sending it to the queue. */
const INVOKE_RETRY_ATTEMPTS = 2;
const INVOKE_MAX_EVENT_AGE = Duration.hours(1);

/** The policies volume-attach may attach to roles it creates: the CSI drivers' own. */
const CSI_DRIVER_POLICIES = ['AmazonEBSCSIDriver*', 'AmazonEFSCSIDriver*'];

export interface EksRemedyStackProps extends StackProps {
  readonly config: EksRemedyConfig;
}

/**
 * eks-remedy's three functions with their triggers, least-privilege roles, EKS access entries,
 * dead-letter queues, alarms and the reports topic. The SAM template infra/sam/template.yaml
 * describes the same resources under the same names.
 */
export class EksRemedyStack extends Stack {
  constructor(scope: Construct, id: string, props: EksRemedyStackProps) {
    super(scope, id, props);
    const config = props.config;

    const topic = new sns.Topic(this, 'ReportTopic', { displayName: 'eks-remedy reports' });
    if (config.slackWorkspaceId !== '' && config.slackChannelId !== '') {
      this.slackChannel(config, topic);
    }

    const environment: Record<string, string> = {
      EKS_REMEDY_CLUSTERS: config.clusterNames.join(','),
      EKS_REMEDY_TOPIC_ARN: topic.topicArn,
      EKS_REMEDY_DRY_RUN: String(config.dryRun),
      EKS_REMEDY_DEADLINE_POLICY: config.deadlinePolicy,
      EKS_REMEDY_DRAIN_ON_REBALANCE: String(config.drainOnRebalance),
      EKS_REMEDY_LOG_LEVEL: config.logLevel,
      EKS_REMEDY_ALLOW_NODE_REPLACEMENT: String(config.allowNodeReplacement),
      EKS_REMEDY_ALLOW_POD_ENI: String(config.allowPodEni),
      EKS_REMEDY_ALLOW_ROLE_CREATION: String(config.allowRoleCreation),
      EKS_REMEDY_POD_IDENTITY_ROLES: config.podIdentityRoleArns.join(','),
      EKS_REMEDY_FORCE_DETACH: String(config.allowForceDetach),
    };
    const common = { config, topic, environment };

    const nodeInterruption = new RemedyFunction(this, 'NodeInterruption', {
      ...common,
      binary: 'node-interruption',
      // Drains run up to EKS_REMEDY_MAX_DRAIN_SECONDS (600 s) plus the volume wait.
      timeout: Duration.seconds(900),
    });
    const pendingPods = new RemedyFunction(this, 'PendingPods', {
      ...common,
      binary: 'pending-pods',
      timeout: Duration.seconds(300),
    });
    const volumeAttach = new RemedyFunction(this, 'VolumeAttach', {
      ...common,
      binary: 'volume-attach',
      timeout: Duration.seconds(300),
    });

    this.nodeInterruptionPermissions(config, nodeInterruption);
    this.pendingPodsPermissions(config, pendingPods);
    this.volumeAttachPermissions(config, volumeAttach);
    for (const cluster of config.clusterNames) {
      for (const remedy of [nodeInterruption, pendingPods, volumeAttach]) {
        new eks.CfnAccessEntry(this, `${remedy.node.id}AccessEntry${logicalName(cluster)}`, {
          clusterName: cluster,
          principalArn: remedy.role.roleArn,
          type: 'STANDARD',
          kubernetesGroups: [KUBERNETES_GROUP],
        });
      }
    }

    this.nodeInterruptionRules(nodeInterruption);
    this.pendingPodsRules(config, pendingPods);
    this.volumeAttachRules(config, volumeAttach);

    new CfnOutput(this, 'ReportTopicArn', {
      description: 'Subscribe email (or Slack, see SlackWorkspaceId) to this topic for the reports.',
      value: topic.topicArn,
    });
    new CfnOutput(this, 'NodeInterruptionRoleArn', { value: nodeInterruption.role.roleArn });
    new CfnOutput(this, 'PendingPodsRoleArn', { value: pendingPods.role.roleArn });
    new CfnOutput(this, 'VolumeAttachRoleArn', { value: volumeAttach.role.roleArn });
    new CfnOutput(this, 'DeadLetterQueueUrls', {
      description: 'Events that could not be handled (node-interruption, pending-pods, volume-attach).',
      value: Fn.join(' ', [
        nodeInterruption.deadLetterQueue.queueUrl,
        pendingPods.deadLetterQueue.queueUrl,
        volumeAttach.deadLetterQueue.queueUrl,
      ]),
    });
  }

  private slackChannel(config: EksRemedyConfig, topic: sns.ITopic): void {
    const role = new iam.Role(this, 'SlackChannelRole', {
      assumedBy: new iam.ServicePrincipal('chatbot.amazonaws.com'),
      inlinePolicies: {
        // Enough to render CloudWatch alarm notifications in the channel, nothing else.
        'notifications-only': new iam.PolicyDocument({
          statements: [
            allow(['cloudwatch:Describe*', 'cloudwatch:Get*', 'cloudwatch:List*'], ['*']),
          ],
        }),
      },
    });
    new chatbot.SlackChannelConfiguration(this, 'SlackChannel', {
      slackChannelConfigurationName: `${Aws.STACK_NAME}-reports`,
      slackWorkspaceId: config.slackWorkspaceId,
      slackChannelId: config.slackChannelId,
      role,
      guardrailPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('CloudWatchReadOnlyAccess')],
      notificationTopics: [topic],
      userRoleRequired: false,
      loggingLevel: chatbot.LoggingLevel.ERROR,
    });
  }

  private nodeInterruptionPermissions(config: EksRemedyConfig, remedy: RemedyFunction): void {
    remedy.allow(['ec2:DescribeInstances', 'autoscaling:DescribeLifecycleHooks'], ['*']);
    // Only the Auto Scaling groups of the configured clusters (managed node groups tag them).
    remedy.allow(
      ['autoscaling:CompleteLifecycleAction', 'autoscaling:RecordLifecycleActionHeartbeat'],
      [regionalArn('autoscaling', 'autoScalingGroup:*:autoScalingGroupName/*')],
      { StringLike: { 'aws:ResourceTag/eks:cluster-name': config.clusterNames } },
    );
    remedy.allow(
      ['eks:DescribeCluster'],
      config.clusterNames.map((cluster) => regionalArn('eks', `cluster/${cluster}`)),
    );
  }

  private pendingPodsPermissions(config: EksRemedyConfig, remedy: RemedyFunction): void {
    remedy.allow(
      ['ec2:DescribeInstances', 'ec2:DescribeInstanceTypes', 'ec2:DescribeSubnets'],
      ['*'],
    );
    remedy.allow(
      [
        'eks:DescribeCluster',
        'eks:ListNodegroups',
        'eks:DescribeNodegroup',
        'eks:DescribeAddon',
        'eks:UpdateAddon',
      ],
      config.clusterNames.flatMap((cluster) => [
        regionalArn('eks', `cluster/${cluster}`),
        regionalArn('eks', `addon/${cluster}/*`),
        regionalArn('eks', `nodegroup/${cluster}/*`),
      ]),
    );
    if (config.allowNodeReplacement) {
      remedy.allow(
        ['eks:UpdateNodegroupVersion'],
        config.clusterNames.map((cluster) => regionalArn('eks', `nodegroup/${cluster}/*`)),
      );
    }
    if (config.allowPodEni) {
      // Security Groups for Pods need this one AWS managed policy on the cluster role; the
      // cluster role's name is not known here, so the policy, not the role, is what is scoped.
      remedy.allow(['iam:ListAttachedRolePolicies'], [iamArn('role/*')]);
      remedy.allow(['iam:AttachRolePolicy'], [iamArn('role/*')], {
        ArnEquals: { 'iam:PolicyARN': awsManagedPolicyArn('AmazonEKSVPCResourceController') },
      });
    }
  }

  private volumeAttachPermissions(config: EksRemedyConfig, remedy: RemedyFunction): void {
    remedy.allow(['ec2:DescribeVolumes', 'ec2:DescribeInstances'], ['*']);
    if (config.allowForceDetach) {
      // Only volumes the EBS CSI driver created for a claim can be detached.
      remedy.allow(['ec2:DetachVolume'], [regionalArn('ec2', 'volume/*')], {
        StringLike: { 'ec2:ResourceTag/kubernetes.io/created-for/pvc/name': '*' },
      });
      remedy.allow(['ec2:DetachVolume'], [regionalArn('ec2', 'instance/*')]);
    }
    remedy.allow(
      [
        'eks:DescribeCluster',
        'eks:ListAddons',
        'eks:DescribeAddon',
        'eks:CreateAddon',
        'eks:ListPodIdentityAssociations',
        'eks:DescribePodIdentityAssociation',
        'eks:CreatePodIdentityAssociation',
        'eks:UpdatePodIdentityAssociation',
      ],
      config.clusterNames.flatMap((cluster) => [
        regionalArn('eks', `cluster/${cluster}`),
        regionalArn('eks', `addon/${cluster}/*`),
        regionalArn('eks', `podidentityassociation/${cluster}/*`),
      ]),
    );
    const passToPods = { StringEquals: { 'iam:PassedToService': 'pods.eks.amazonaws.com' } };
    if (config.podIdentityRoleArns.length > 0) {
      remedy.allow(['iam:GetRole', 'iam:ListAttachedRolePolicies'], config.podIdentityRoleArns);
      remedy.allow(['iam:PassRole'], config.podIdentityRoleArns, passToPods);
    }
    if (config.allowRoleCreation) {
      // Roles eks-remedy creates live under the path /eks-remedy/ and get only a CSI driver
      // policy: nothing else can be created, changed or passed.
      const created = iamArn('role/eks-remedy/*');
      remedy.allow(['iam:GetRole', 'iam:ListAttachedRolePolicies', 'iam:CreateRole'], [created]);
      remedy.allow(['iam:AttachRolePolicy'], [created], {
        ArnLike: {
          'iam:PolicyARN': CSI_DRIVER_POLICIES.map((name) => awsManagedPolicyArn(`service-role/${name}`)),
        },
      });
      remedy.allow(['iam:PassRole'], [created], passToPods);
    }
  }

  private nodeInterruptionRules(remedy: RemedyFunction): void {
    remedy.addRule('SpotInterruptionRule', 'EC2 Spot Instance Interruption Warning -> node-interruption', {
      source: ['aws.ec2'],
      detailType: ['EC2 Spot Instance Interruption Warning'],
    });
    remedy.addRule('RebalanceRecommendationRule', 'EC2 Instance Rebalance Recommendation -> node-interruption', {
      source: ['aws.ec2'],
      detailType: ['EC2 Instance Rebalance Recommendation'],
    });
    remedy.addRule('InstanceStateChangeRule', 'EC2 instance stopping or terminating -> node-interruption', {
      source: ['aws.ec2'],
      detailType: ['EC2 Instance State-change Notification'],
      detail: { state: ['stopping', 'stopped', 'shutting-down', 'terminated'] },
    });
    remedy.addRule(
      'TerminateLifecycleActionRule',
      'Auto Scaling EC2 Instance-terminate Lifecycle Action -> node-interruption',
      { source: ['aws.autoscaling'], detailType: ['EC2 Instance-terminate Lifecycle Action'] },
    );
    remedy.addRule(
      'HealthScheduledChangeRule',
      'AWS Health EC2 scheduled changes (instance retirement, maintenance) -> node-interruption',
      {
        source: ['aws.health'],
        detailType: ['AWS Health Event'],
        detail: { service: ['EC2'], eventTypeCategory: ['scheduledChange'] },
      },
    );
  }

  private pendingPodsRules(config: EksRemedyConfig, remedy: RemedyFunction): void {
    if (config.pendingPodsAlarmNames.length > 0) {
      remedy.addRule('PendingPodsAlarmRule', 'Configured pending-pods alarms entering ALARM -> pending-pods', {
        source: ['aws.cloudwatch'],
        detailType: ['CloudWatch Alarm State Change'],
        detail: { alarmName: config.pendingPodsAlarmNames, state: { value: ['ALARM'] } },
      });
    }
    if (config.createPendingPodsAlarm) {
      const prefix = `${Aws.STACK_NAME}-pending-pods-`;
      for (const cluster of config.clusterNames) {
        // Fires pending-pods (PendingPodsCreatedAlarmRule matches these names by prefix).
        new cloudwatch.Alarm(this, `ContainerInsightsPendingPodsAlarm${logicalName(cluster)}`, {
          alarmName: `${prefix}${cluster}`,
          alarmDescription: `Pods of ${cluster} stay Pending (Container Insights pod_status_pending).`,
          metric: new cloudwatch.Metric({
            namespace: 'ContainerInsights',
            metricName: 'pod_status_pending',
            dimensionsMap: { ClusterName: cluster },
            statistic: 'Maximum',
            period: Duration.minutes(1),
          }),
          evaluationPeriods: 5,
          threshold: 0,
          comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
          treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
        });
      }
      remedy.addRule(
        'PendingPodsCreatedAlarmRule',
        "This stack's Container Insights pending-pods alarms entering ALARM -> pending-pods",
        {
          source: ['aws.cloudwatch'],
          detailType: ['CloudWatch Alarm State Change'],
          detail: { alarmName: [{ prefix }], state: { value: ['ALARM'] } },
        },
      );
    }
    if (config.pendingPodsSchedule !== '') {
      remedy.addSchedule('PendingPodsScheduleRule', 'Periodic pending-pods check', config.pendingPodsSchedule);
    }
  }

  private volumeAttachRules(config: EksRemedyConfig, remedy: RemedyFunction): void {
    remedy.addRule('VolumeApiErrorRule', 'Failed EC2 AttachVolume / CreateVolume calls (CloudTrail) -> volume-attach', {
      source: ['aws.ec2'],
      detailType: ['AWS API Call via CloudTrail'],
      detail: {
        eventSource: ['ec2.amazonaws.com'],
        eventName: ['AttachVolume', 'CreateVolume'],
        errorCode: [{ exists: true }],
      },
    });
    remedy.addRule('VolumeNotificationRule', 'Failed EBS volume operations -> volume-attach', {
      source: ['aws.ec2'],
      detailType: ['EBS Volume Notification'],
      detail: { result: ['failed'] },
    });
    if (config.sweepSchedule !== '') {
      remedy.addSchedule(
        'VolumeSweepRule',
        'Periodic volume-attach sweep (claims stuck without credentials, lost nodes)',
        config.sweepSchedule,
      );
    }
    if (config.volumeAttachAlarmNames.length > 0) {
      remedy.addRule('VolumeAttachAlarmRule', 'Configured volume alarms entering ALARM -> volume-attach', {
        source: ['aws.cloudwatch'],
        detailType: ['CloudWatch Alarm State Change'],
        detail: { alarmName: config.volumeAttachAlarmNames, state: { value: ['ALARM'] } },
      });
    }
  }
}

interface RemedyFunctionProps {
  readonly config: EksRemedyConfig;
  readonly topic: sns.ITopic;
  readonly environment: Record<string, string>;
  /** The workspace binary, also the folder under the asset directory. */
  readonly binary: string;
  readonly timeout: Duration;
}

/**
 * One eks-remedy function with everything it owns: its role (logs, reports topic, dead-letter
 * queue to start with), log group, dead-letter queue, and alarms on its errors and on anything
 * left in the queue.
 */
class RemedyFunction extends Construct {
  readonly function: lambda.Function;
  readonly role: iam.Role;
  readonly deadLetterQueue: sqs.Queue;

  constructor(scope: Construct, id: string, props: RemedyFunctionProps) {
    super(scope, id);

    const bundle = path.join(props.config.assetDir, props.binary, 'bootstrap.zip');
    if (!fs.existsSync(bundle)) {
      throw new Error(
        `${bundle} does not exist: run infra/build.sh, or pass -c AssetDir=DIR with DIR/${props.binary}/bootstrap.zip`,
      );
    }

    this.role = new iam.Role(this, 'Role', {
      assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
    });
    // Deleted with the stack, as in the SAM template: the reports topic is the record of repairs.
    const logGroup = new logs.LogGroup(this, 'LogGroup', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetterQueue', {
      retentionPeriod: Duration.days(14),
      encryption: sqs.QueueEncryption.SQS_MANAGED,
    });

    this.allow(['logs:CreateLogStream', 'logs:PutLogEvents'], [logGroup.logGroupArn]);
    this.allow(['sns:Publish'], [props.topic.topicArn]);
    this.allow(['sqs:SendMessage'], [this.deadLetterQueue.queueArn]);

    this.function = new lambda.Function(this, 'Function', {
      description: `eks-remedy ${props.binary}`,
      runtime: lambda.Runtime.PROVIDED_AL2023,
      architecture: lambda.Architecture.X86_64,
      handler: 'bootstrap',
      code: lambda.Code.fromAsset(bundle),
      memorySize: 256,
      timeout: props.timeout,
      role: this.role,
      logGroup,
      environment: props.environment,
      retryAttempts: INVOKE_RETRY_ATTEMPTS,
      maxEventAge: INVOKE_MAX_EVENT_AGE,
      onFailure: new QueueDestination(this.deadLetterQueue),
    });

    // Anything in a dead-letter queue is an event that was never handled; any function error
    // is a failed repair. Both notify the reports topic.
    const notify = new cloudwatchActions.SnsAction(props.topic);
    new cloudwatch.Alarm(this, 'DeadLetterAlarm', {
      alarmDescription: `${props.binary} has unhandled events in its dead-letter queue.`,
      metric: this.deadLetterQueue.metricApproximateNumberOfMessagesVisible({
        statistic: 'Maximum',
        period: Duration.minutes(5),
      }),
      evaluationPeriods: 1,
      threshold: 0,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    }).addAlarmAction(notify);
    new cloudwatch.Alarm(this, 'ErrorsAlarm', {
      alarmDescription: `${props.binary} failed.`,
      metric: this.function.metricErrors({ statistic: 'Sum', period: Duration.minutes(5) }),
      evaluationPeriods: 1,
      threshold: 0,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    }).addAlarmAction(notify);
  }

  /** Grants the function's role `actions` on `resources`. */
  allow(actions: string[], resources: string[], conditions?: Record<string, Record<string, unknown>>): void {
    this.role.addToPolicy(allow(actions, resources, conditions));
  }

  /** Sends events matching `pattern` to the function, retried and dead-lettered. */
  addRule(id: string, description: string, pattern: events.EventPattern): events.Rule {
    return this.target(new events.Rule(Stack.of(this), id, { description, eventPattern: pattern }));
  }

  /** Runs the function on a schedule expression (`rate(...)` or `cron(...)`). */
  addSchedule(id: string, description: string, expression: string): events.Rule {
    const schedule = events.Schedule.expression(expression);
    return this.target(new events.Rule(Stack.of(this), id, { description, schedule }));
  }

  private target(rule: events.Rule): events.Rule {
    rule.addTarget(
      new targets.LambdaFunction(this.function, {
        retryAttempts: RULE_RETRY_ATTEMPTS,
        maxEventAge: RULE_MAX_EVENT_AGE,
        deadLetterQueue: this.deadLetterQueue,
      }),
    );
    return rule;
  }
}

/**
 * An on-failure destination that only names the queue: the role's sqs:SendMessage is granted
 * explicitly, where CDK's SqsDestination would add queue reads the function never makes.
 */
class QueueDestination implements lambda.IDestination {
  constructor(private readonly queue: sqs.IQueue) {}

  bind(): lambda.DestinationConfig {
    return { destination: this.queue.queueArn };
  }
}

function allow(
  actions: string[],
  resources: string[],
  conditions?: Record<string, Record<string, unknown>>,
): iam.PolicyStatement {
  return new iam.PolicyStatement({ effect: iam.Effect.ALLOW, actions, resources, conditions });
}

function regionalArn(service: string, resource: string): string {
  return `arn:${Aws.PARTITION}:${service}:${Aws.REGION}:${Aws.ACCOUNT_ID}:${resource}`;
}

function iamArn(resource: string): string {
  return `arn:${Aws.PARTITION}:iam::${Aws.ACCOUNT_ID}:${resource}`;
}

function awsManagedPolicyArn(name: string): string {
  return `arn:${Aws.PARTITION}:iam::aws:policy/${name}`;
}

/** A cluster name as part of a CloudFormation logical id, like SAM's `&{Cluster}`. */
export function logicalName(cluster: string): string {
  return cluster.replace(/[^A-Za-z0-9]/g, '');
}
