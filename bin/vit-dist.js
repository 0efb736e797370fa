#!/usr/bin/env node
// Entry point: load TypeScript sources through tsx so that a clean clone runs without a build step.
import { register } from 'tsx/esm/api';
register();
await import('../src/cli/main.ts');
