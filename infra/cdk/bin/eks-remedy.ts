#!/usr/bin/env node
import * as fs from 'node:fs';
import * as path from 'node:path';
import { App } from 'aws-cdk-lib';
import { configFromContext } from '../lib/config';
import { EksRemedyStack } from '../lib/eks-remedy-stack';

// Environment-agnostic on purpose: nothing is looked up in an account at synth time.
const app = new App();
// infra/cdk/bin when run by ts-node, infra/cdk/dist/bin when compiled.
let cdkRoot = path.resolve(__dirname, '..');
if (!fs.existsSync(path.join(cdkRoot, 'cdk.json'))) cdkRoot = path.resolve(cdkRoot, '..');
const config = configFromContext((key) => app.node.tryGetContext(key), path.join(cdkRoot, '..', 'dist'));
new EksRemedyStack(app, String(app.node.tryGetContext('StackName') ?? 'EksRemedy'), {
  description: 'eks-remedy: Lambda functions that repair Amazon EKS clusters',
  config,
});
