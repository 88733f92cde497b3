import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/**
 * Custom search attributes, so the Temporal UI can filter runs by resource and status
 * (`SluiceResource = "orders" AND SluiceStatus = "failed"`). The dev servers sluice starts
 * register them; on a real cluster, register them once with
 * `temporal operator search-attribute create --name SluiceResource --type Keyword` (same for SluiceStatus).
 */
export const SEARCH_ATTRIBUTES = {
  resource: defineSearchAttributeKey('SluiceResource', SearchAttributeType.KEYWORD),
  status: defineSearchAttributeKey('SluiceStatus', SearchAttributeType.KEYWORD),
} as const;
