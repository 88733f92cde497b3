/** Every workflow type the sluice worker serves (CONTRACT.md); the bundle entry point. */
export { backfillWorkflow } from './backfill';
export { fullRefreshWorkflow } from './full-refresh';
export { pipelineWorkflow } from './pipeline';
export { filesWorkflow } from './files';
export { incrementalWorkflow } from './incremental';
export { cdcWorkflow } from './cdc';
