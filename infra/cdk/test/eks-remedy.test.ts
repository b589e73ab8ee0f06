import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { App, CfnResource, Stack } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { IConstruct } from 'constructs';
import { configFromContext } from '../lib/config';
import { EksRemedyStack } from '../lib/eks-remedy-stack';

// Placeholder bundles: synthesis only hashes them, nothing here builds or deploys code.
const ASSETS = fs.mkdtempSync(path.join(os.tmpdir(), 'eks-remedy-assets-'));
for (const binary of ['node-interruption', 'pending-pods', 'volume-attach']) {
  fs.mkdirSync(path.join(ASSETS, binary));
  fs.writeFileSync(path.join(ASSETS, binary, 'bootstrap.zip'), `placeholder for ${binary}`);
}

const FULL: Record<string, string> = {
  ClusterNames: 'blue,green-2',
  DryRun: 'false',
  DeadlinePolicy: 'delete',
  DrainOnRebalance: 'true',
  AllowNodeReplacement: 'true',
  AllowPodEni: 'true',
  AllowRoleCreation: 'true',
  PodIdentityRoleArns: 'arn:aws:iam::123456789012:role/ebs-csi',
  AllowForceDetach: 'true',
  LogLevel: 'debug',
  PendingPodsAlarmNames: 'blue-pending',
  CreatePendingPodsAlarm: 'true',
  PendingPodsSchedule: 'rate(15 minutes)',
  SweepSchedule: 'rate(5 minutes)',
  VolumeAttachAlarmNames: 'ebs-stuck',
  SlackWorkspaceId: 'T0123ABCD',
  SlackChannelId: 'C0123ABCD',
};
const MINIMAL: Record<string, string> = { ClusterNames: 'blue' };

type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

interface Synthesized {
  stack: EksRemedyStack;
  template: Json;
}

function synth(context: Record<string, string>): Synthesized {
  const app = new App();
  const config = configFromContext((key) => (key === 'AssetDir' ? ASSETS : context[key]), ASSETS);
  const stack = new EksRemedyStack(app, 'EksRemedy', { config });
  return { stack, template: Template.fromStack(stack).toJSON() };
}

/** Logical id of the resource of the construct at `constructPath` (below the stack). */
function logicalId(stack: Stack, constructPath: string): string {
  let construct: IConstruct = stack;
  for (const part of constructPath.split('/')) construct = construct.node.findChild(part);
  const resource = (construct.node.defaultChild ?? construct) as CfnResource;
  return stack.resolve(resource.logicalId);
}

function resources(template: Json, type: string): [string, Json][] {
  return Object.entries(template.Resources as Record<string, Json>).filter(([, r]) => r.Type === type);
}

function list<T>(value: T | T[] | undefined): T[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value];
}

/** Every statement that applies to a role, inline or attached. */
function statements(template: Json, roleId: string): Json[] {
  const role = template.Resources[roleId];
  const inline = list(role.Properties.Policies).flatMap((p: Json) => list(p.PolicyDocument.Statement));
  const attached = resources(template, 'AWS::IAM::Policy')
    .filter(([, p]) => list(p.Properties.Roles).some((r: Json) => r.Ref === roleId))
    .flatMap(([, p]) => list(p.Properties.PolicyDocument.Statement));
  return [...inline, ...attached];
}

const FUNCTIONS = ['NodeInterruption', 'PendingPods', 'VolumeAttach'];
const COMMON_ACTIONS = ['logs:CreateLogStream', 'logs:PutLogEvents', 'sns:Publish', 'sqs:SendMessage'];

/** The actions each function calls: what its role must allow, and all it may allow. */
interface Flags {
  nodeReplacement: boolean;
  podEni: boolean;
  roleCreation: boolean;
  podIdentityRoles: boolean;
  forceDetach: boolean;
}

function expectedActions(flags: Flags) {
  return {
    NodeInterruption: [
      ...COMMON_ACTIONS,
      'ec2:DescribeInstances',
      'eks:DescribeCluster',
      'autoscaling:DescribeLifecycleHooks',
      'autoscaling:CompleteLifecycleAction',
      'autoscaling:RecordLifecycleActionHeartbeat',
    ],
    PendingPods: [
      ...COMMON_ACTIONS,
      'ec2:DescribeInstances',
      'ec2:DescribeInstanceTypes',
      'ec2:DescribeSubnets',
      'eks:DescribeCluster',
      'eks:DescribeAddon',
      'eks:UpdateAddon',
      'eks:DescribeNodegroup',
      'eks:ListNodegroups',
      ...(flags.nodeReplacement ? ['eks:UpdateNodegroupVersion'] : []),
      ...(flags.podEni ? ['iam:AttachRolePolicy', 'iam:ListAttachedRolePolicies'] : []),
    ],
    VolumeAttach: [
      ...COMMON_ACTIONS,
      'eks:DescribeCluster',
      'eks:DescribeAddon',
      'eks:CreateAddon',
      'eks:ListAddons',
      'eks:ListPodIdentityAssociations',
      'eks:DescribePodIdentityAssociation',
      'eks:CreatePodIdentityAssociation',
      'eks:UpdatePodIdentityAssociation',
      'ec2:DescribeVolumes',
      'ec2:DescribeInstances',
      ...(flags.forceDetach ? ['ec2:DetachVolume'] : []),
      ...(flags.podIdentityRoles || flags.roleCreation
        ? ['iam:GetRole', 'iam:ListAttachedRolePolicies', 'iam:PassRole']
        : []),
      ...(flags.roleCreation ? ['iam:CreateRole', 'iam:AttachRolePolicy'] : []),
    ],
  } as Record<string, string[]>;
}

/** Actions AWS authorizes only on "*". */
const STAR_ONLY = new Set([
  'ec2:DescribeInstances',
  'ec2:DescribeInstanceTypes',
  'ec2:DescribeSubnets',
  'ec2:DescribeVolumes',
  'autoscaling:DescribeLifecycleHooks',
]);

const EXPECTED_PATTERNS: Record<string, Json> = {
  SpotInterruptionRule: { source: ['aws.ec2'], 'detail-type': ['EC2 Spot Instance Interruption Warning'] },
  RebalanceRecommendationRule: { source: ['aws.ec2'], 'detail-type': ['EC2 Instance Rebalance Recommendation'] },
  InstanceStateChangeRule: {
    source: ['aws.ec2'],
    'detail-type': ['EC2 Instance State-change Notification'],
    detail: { state: ['stopping', 'stopped', 'shutting-down', 'terminated'] },
  },
  TerminateLifecycleActionRule: {
    source: ['aws.autoscaling'],
    'detail-type': ['EC2 Instance-terminate Lifecycle Action'],
  },
  HealthScheduledChangeRule: {
    source: ['aws.health'],
    'detail-type': ['AWS Health Event'],
    detail: { service: ['EC2'], eventTypeCategory: ['scheduledChange'] },
  },
  PendingPodsAlarmRule: {
    source: ['aws.cloudwatch'],
    'detail-type': ['CloudWatch Alarm State Change'],
    detail: { alarmName: ['blue-pending'], state: { value: ['ALARM'] } },
  },
  PendingPodsCreatedAlarmRule: {
    source: ['aws.cloudwatch'],
    'detail-type': ['CloudWatch Alarm State Change'],
    detail: {
      alarmName: [{ prefix: { 'Fn::Join': ['', [{ Ref: 'AWS::StackName' }, '-pending-pods-']] } }],
      state: { value: ['ALARM'] },
    },
  },
  VolumeApiErrorRule: {
    source: ['aws.ec2'],
    'detail-type': ['AWS API Call via CloudTrail'],
    detail: {
      eventSource: ['ec2.amazonaws.com'],
      eventName: ['AttachVolume', 'CreateVolume'],
      errorCode: [{ exists: true }],
    },
  },
  VolumeNotificationRule: {
    source: ['aws.ec2'],
    'detail-type': ['EBS Volume Notification'],
    detail: { result: ['failed'] },
  },
  VolumeAttachAlarmRule: {
    source: ['aws.cloudwatch'],
    'detail-type': ['CloudWatch Alarm State Change'],
    detail: { alarmName: ['ebs-stuck'], state: { value: ['ALARM'] } },
  },
};
const EXPECTED_SCHEDULES: Record<string, string> = {
  PendingPodsScheduleRule: 'rate(15 minutes)',
  VolumeSweepRule: 'rate(5 minutes)',
};
const RULE_OWNER: Record<string, string> = {
  SpotInterruptionRule: 'NodeInterruption',
  RebalanceRecommendationRule: 'NodeInterruption',
  InstanceStateChangeRule: 'NodeInterruption',
  TerminateLifecycleActionRule: 'NodeInterruption',
  HealthScheduledChangeRule: 'NodeInterruption',
  PendingPodsAlarmRule: 'PendingPods',
  PendingPodsCreatedAlarmRule: 'PendingPods',
  PendingPodsScheduleRule: 'PendingPods',
  VolumeApiErrorRule: 'VolumeAttach',
  VolumeNotificationRule: 'VolumeAttach',
  VolumeSweepRule: 'VolumeAttach',
  VolumeAttachAlarmRule: 'VolumeAttach',
};

const full = synth(FULL);
const minimal = synth(MINIMAL);

test('every rule has exactly its documented event pattern or schedule', () => {
  const { stack, template } = full;
  const rules = resources(template, 'AWS::Events::Rule');
  assert.equal(rules.length, Object.keys(RULE_OWNER).length);
  for (const [name, pattern] of Object.entries(EXPECTED_PATTERNS)) {
    const rule = template.Resources[logicalId(stack, name)].Properties;
    assert.deepEqual(rule.EventPattern, pattern, name);
    assert.equal(rule.ScheduleExpression, undefined, name);
  }
  for (const [name, expression] of Object.entries(EXPECTED_SCHEDULES)) {
    const rule = template.Resources[logicalId(stack, name)].Properties;
    assert.equal(rule.ScheduleExpression, expression, name);
    assert.equal(rule.EventPattern, undefined, name);
  }
});

test('optional triggers exist only when configured', () => {
  const { stack, template } = minimal;
  const names = resources(template, 'AWS::Events::Rule').map(([id]) => id).sort();
  const always = [
    'SpotInterruptionRule',
    'RebalanceRecommendationRule',
    'InstanceStateChangeRule',
    'TerminateLifecycleActionRule',
    'HealthScheduledChangeRule',
    'VolumeApiErrorRule',
    'VolumeNotificationRule',
    'VolumeSweepRule',
  ];
  assert.deepEqual(names, always.map((name) => logicalId(stack, name)).sort());
  const sweep = template.Resources[logicalId(stack, 'VolumeSweepRule')].Properties;
  assert.equal(sweep.ScheduleExpression, 'rate(10 minutes)');

  const noSweep = synth({ ClusterNames: 'blue', SweepSchedule: '' });
  assert.equal(
    resources(noSweep.template, 'AWS::Events::Rule').some(([, r]) => r.Properties.ScheduleExpression),
    false,
  );
});

test('every rule target retries, then dead-letters into its own function queue', () => {
  for (const { stack, template } of [full, minimal]) {
    for (const [id, rule] of resources(template, 'AWS::Events::Rule')) {
      const name = Object.keys(RULE_OWNER).find((n) => stack.node.tryFindChild(n) && logicalId(stack, n) === id)!;
      const owner = RULE_OWNER[name];
      const targets = rule.Properties.Targets;
      assert.equal(targets.length, 1, name);
      assert.deepEqual(targets[0].Arn, { 'Fn::GetAtt': [logicalId(stack, `${owner}/Function`), 'Arn'] }, name);
      assert.deepEqual(targets[0].RetryPolicy, { MaximumRetryAttempts: 8, MaximumEventAgeInSeconds: 3600 }, name);
      assert.deepEqual(
        targets[0].DeadLetterConfig,
        { Arn: { 'Fn::GetAtt': [logicalId(stack, `${owner}/DeadLetterQueue`), 'Arn'] } },
        name,
      );
      // EventBridge may write to the queue, for this rule only.
      const queuePolicy = template.Resources[logicalId(stack, `${owner}/DeadLetterQueue/Policy`)];
      const allowed = list(queuePolicy.Properties.PolicyDocument.Statement).some(
        (s: Json) =>
          s.Principal?.Service === 'events.amazonaws.com' &&
          s.Action === 'sqs:SendMessage' &&
          JSON.stringify(s.Condition?.ArnEquals?.['aws:SourceArn']) === JSON.stringify({ 'Fn::GetAtt': [id, 'Arn'] }),
      );
      assert.ok(allowed, `${name}: its dead-letter queue does not accept EventBridge's messages`);
      // And may invoke the function, from this rule only.
      const permitted = resources(template, 'AWS::Lambda::Permission').some(
        ([, p]) =>
          p.Properties.Principal === 'events.amazonaws.com' &&
          JSON.stringify(p.Properties.SourceArn) === JSON.stringify({ 'Fn::GetAtt': [id, 'Arn'] }),
      );
      assert.ok(permitted, `${name}: no invoke permission`);
    }
  }
});

test('failed invocations are retried twice, then sent to the function queue', () => {
  const { stack, template } = full;
  const configs = resources(template, 'AWS::Lambda::EventInvokeConfig');
  assert.equal(configs.length, 3);
  for (const fn of FUNCTIONS) {
    const config = configs.find(([, c]) => c.Properties.FunctionName.Ref === logicalId(stack, `${fn}/Function`));
    assert.ok(config, fn);
    assert.equal(config[1].Properties.MaximumRetryAttempts, 2);
    assert.equal(config[1].Properties.MaximumEventAgeInSeconds, 3600);
    assert.deepEqual(config[1].Properties.DestinationConfig, {
      OnFailure: { Destination: { 'Fn::GetAtt': [logicalId(stack, `${fn}/DeadLetterQueue`), 'Arn'] } },
    });
  }
});

test('each function role allows exactly the actions the function calls', () => {
  const none: Flags = {
    nodeReplacement: false,
    podEni: false,
    roleCreation: false,
    podIdentityRoles: false,
    forceDetach: false,
  };
  const cases = [
    {
      synthesized: full,
      flags: { nodeReplacement: true, podEni: true, roleCreation: true, podIdentityRoles: true, forceDetach: true },
    },
    { synthesized: minimal, flags: none },
    {
      synthesized: synth({ ClusterNames: 'blue', PodIdentityRoleArns: 'arn:aws:iam::123456789012:role/ebs-csi' }),
      flags: { ...none, podIdentityRoles: true },
    },
    { synthesized: synth({ ClusterNames: 'blue', AllowPodEni: 'true' }), flags: { ...none, podEni: true } },
    { synthesized: synth({ ClusterNames: 'blue', AllowRoleCreation: 'true' }), flags: { ...none, roleCreation: true } },
    { synthesized: synth({ ClusterNames: 'blue', AllowForceDetach: 'true' }), flags: { ...none, forceDetach: true } },
  ];
  for (const { synthesized, flags } of cases) {
    const expected = expectedActions(flags);
    for (const fn of FUNCTIONS) {
      const granted = statements(synthesized.template, logicalId(synthesized.stack, `${fn}/Role`));
      const actions = new Set(granted.flatMap((s) => list<string>(s.Action)));
      assert.deepEqual([...actions].sort(), [...new Set(expected[fn])].sort(), `${fn} with ${JSON.stringify(flags)}`);
      for (const statement of granted) {
        assert.equal(statement.Effect, 'Allow');
        if (list(statement.Resource).includes('*')) {
          for (const action of list<string>(statement.Action)) {
            assert.ok(STAR_ONLY.has(action), `${fn}: ${action} on "*"`);
          }
        }
      }
    }
  }
});

test('dangerous actions carry their conditions and stay on the configured resources', () => {
  const { stack, template } = full;
  const all = FUNCTIONS.flatMap((fn) =>
    statements(template, logicalId(stack, `${fn}/Role`)).map((s) => ({ fn, s })),
  );
  const withAction = (action: string) => all.filter(({ s }) => list(s.Action).includes(action));
  const text = (value: Json) => JSON.stringify(value);

  for (const { s } of withAction('iam:PassRole')) {
    assert.deepEqual(s.Condition, { StringEquals: { 'iam:PassedToService': 'pods.eks.amazonaws.com' } });
    assert.match(text(s.Resource), /role\/ebs-csi|role\/eks-remedy\/\*/);
  }
  for (const { fn, s } of withAction('iam:AttachRolePolicy')) {
    assert.ok(s.Condition?.ArnEquals?.['iam:PolicyARN'] || s.Condition?.ArnLike?.['iam:PolicyARN'], fn);
  }
  for (const { s } of withAction('iam:CreateRole')) assert.match(text(s.Resource), /:role\/eks-remedy\/\*"/);
  for (const { s } of withAction('autoscaling:CompleteLifecycleAction')) {
    assert.deepEqual(s.Condition, { StringLike: { 'aws:ResourceTag/eks:cluster-name': ['blue', 'green-2'] } });
  }
  const detach = withAction('ec2:DetachVolume');
  assert.equal(detach.length, 2);
  for (const { s } of detach) {
    if (text(s.Resource).includes(':volume/')) {
      assert.deepEqual(s.Condition, { StringLike: { 'ec2:ResourceTag/kubernetes.io/created-for/pvc/name': '*' } });
    } else {
      assert.match(text(s.Resource), /:instance\/\*"/);
    }
  }
  // EKS permissions name only the configured clusters and what belongs to them.
  for (const { fn, s } of all.filter(({ s }) => list<string>(s.Action).some((a) => a.startsWith('eks:')))) {
    for (const resource of list(s.Resource)) {
      assert.match(text(resource), /:(cluster|addon|nodegroup|podidentityassociation)\/(blue|green-2)(\/\*)?"/, fn);
    }
  }
});

test('an access entry per cluster and function maps the role to the remediators group, without access policies', () => {
  const { stack, template } = full;
  const entries = resources(template, 'AWS::EKS::AccessEntry').map(([, e]) => e.Properties);
  assert.equal(entries.length, 2 * FUNCTIONS.length);
  for (const cluster of ['blue', 'green-2']) {
    for (const fn of FUNCTIONS) {
      const entry = entries.find(
        (e) =>
          e.ClusterName === cluster &&
          JSON.stringify(e.PrincipalArn) === JSON.stringify({ 'Fn::GetAtt': [logicalId(stack, `${fn}/Role`), 'Arn'] }),
      );
      assert.ok(entry, `${fn} on ${cluster}`);
      assert.equal(entry.Type, 'STANDARD');
      assert.deepEqual(entry.KubernetesGroups, ['eks-remediators']);
      assert.equal(entry.AccessPolicies, undefined);
    }
  }
  assert.equal(resources(minimal.template, 'AWS::EKS::AccessEntry').length, FUNCTIONS.length);
});

test('functions run the workspace binaries on provided.al2023 x86_64 with the configured settings', () => {
  const { stack, template } = full;
  for (const fn of FUNCTIONS) {
    const props = template.Resources[logicalId(stack, `${fn}/Function`)].Properties;
    assert.equal(props.Runtime, 'provided.al2023');
    assert.deepEqual(props.Architectures ?? ['x86_64'], ['x86_64']);
    assert.equal(props.Handler, 'bootstrap');
    const env = props.Environment.Variables;
    assert.deepEqual(
      { ...env, EKS_REMEDY_TOPIC_ARN: undefined },
      {
        EKS_REMEDY_CLUSTERS: 'blue,green-2',
        EKS_REMEDY_TOPIC_ARN: undefined,
        EKS_REMEDY_DRY_RUN: 'false',
        EKS_REMEDY_DEADLINE_POLICY: 'delete',
        EKS_REMEDY_DRAIN_ON_REBALANCE: 'true',
        EKS_REMEDY_LOG_LEVEL: 'debug',
        EKS_REMEDY_ALLOW_NODE_REPLACEMENT: 'true',
        EKS_REMEDY_ALLOW_POD_ENI: 'true',
        EKS_REMEDY_ALLOW_ROLE_CREATION: 'true',
        EKS_REMEDY_POD_IDENTITY_ROLES: 'arn:aws:iam::123456789012:role/ebs-csi',
        EKS_REMEDY_FORCE_DETACH: 'true',
      },
    );
    assert.deepEqual(env.EKS_REMEDY_TOPIC_ARN, { Ref: logicalId(stack, 'ReportTopic') });
  }
  const defaults = minimal.template.Resources[logicalId(minimal.stack, 'NodeInterruption/Function')].Properties;
  assert.equal(defaults.Environment.Variables.EKS_REMEDY_DRY_RUN, 'true', 'dry-run is the default');
});

test('dead-letter depth and function errors alarm on the reports topic', () => {
  const { stack, template } = minimal;
  const alarms = resources(template, 'AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
  assert.equal(alarms.length, 2 * FUNCTIONS.length);
  const topic = { Ref: logicalId(stack, 'ReportTopic') };
  for (const fn of FUNCTIONS) {
    const depth = alarms.find(
      (a) =>
        a.MetricName === 'ApproximateNumberOfMessagesVisible' &&
        JSON.stringify(a.Dimensions) ===
          JSON.stringify([
            { Name: 'QueueName', Value: { 'Fn::GetAtt': [logicalId(stack, `${fn}/DeadLetterQueue`), 'QueueName'] } },
          ]),
    );
    assert.ok(depth, `${fn} dead-letter alarm`);
    assert.equal(depth.ComparisonOperator, 'GreaterThanThreshold');
    assert.equal(depth.Threshold, 0);
    assert.deepEqual(depth.AlarmActions, [topic]);
    const errors = alarms.find(
      (a) =>
        a.Namespace === 'AWS/Lambda' &&
        a.MetricName === 'Errors' &&
        a.Dimensions[0].Value.Ref === logicalId(stack, `${fn}/Function`),
    );
    assert.ok(errors, `${fn} errors alarm`);
    assert.deepEqual(errors.AlarmActions, [topic]);
  }
});

test('the Container Insights pending-pods alarm and the Slack channel are optional', () => {
  assert.equal(resources(minimal.template, 'AWS::Chatbot::SlackChannelConfiguration').length, 0);
  const onlyWorkspace = synth({ ClusterNames: 'blue', SlackWorkspaceId: 'T0123ABCD' });
  assert.equal(resources(onlyWorkspace.template, 'AWS::Chatbot::SlackChannelConfiguration').length, 0);

  const slack = resources(full.template, 'AWS::Chatbot::SlackChannelConfiguration');
  assert.equal(slack.length, 1);
  assert.deepEqual(slack[0][1].Properties.SnsTopicArns, [{ Ref: logicalId(full.stack, 'ReportTopic') }]);
  const slackRole = logicalId(full.stack, 'SlackChannelRole');
  for (const s of statements(full.template, slackRole)) {
    for (const action of list<string>(s.Action)) assert.match(action, /^cloudwatch:(Describe|Get|List)\*$/);
  }

  const insights = resources(full.template, 'AWS::CloudWatch::Alarm')
    .map(([, a]) => a.Properties)
    .filter((a) => a.Namespace === 'ContainerInsights');
  assert.deepEqual(
    insights.map((a) => [a.MetricName, a.Dimensions]),
    ['blue', 'green-2'].map((c) => ['pod_status_pending', [{ Name: 'ClusterName', Value: c }]]),
  );
  assert.equal(
    resources(minimal.template, 'AWS::CloudWatch::Alarm').some(([, a]) => a.Properties.Namespace === 'ContainerInsights'),
    false,
  );
});

test('configuration errors are reported at synth time', () => {
  const parse = (context: Record<string, string>) => () => configFromContext((key) => context[key], ASSETS);
  assert.throws(parse({}), /ClusterNames is required/);
  assert.throws(parse({ ClusterNames: 'blue', DryRun: 'yes' }), /DryRun must be true or false/);
  assert.throws(parse({ ClusterNames: 'blue', DeadlinePolicy: 'force' }), /DeadlinePolicy must be one of/);
  assert.throws(parse({ ClusterNames: 'bad name' }), /not an EKS cluster name/);
  assert.throws(parse({ ClusterNames: 'blue', PodIdentityRoleArns: 'ebs-csi' }), /not an IAM role ARN/);
  const missing = path.join(ASSETS, 'missing');
  assert.throws(
    () => new EksRemedyStack(new App(), 'EksRemedy', { config: configFromContext((k) => ({ ClusterNames: 'blue' })[k], missing) }),
    /run infra\/build\.sh/,
  );
});
