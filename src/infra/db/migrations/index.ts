import type { MigrationObject } from '@mikro-orm/core';
import { Migration20261129000000_threads } from './Migration20261129000000_threads.js';
import { Migration20261129010000_messages } from './Migration20261129010000_messages.js';
import { Migration20261129020000_receipt_floor } from './Migration20261129020000_receipt_floor.js';
import { Migration20261129030000_one_statement_writes } from './Migration20261129030000_one_statement_writes.js';
import { Migration20261129040000_write_functions } from './Migration20261129040000_write_functions.js';
import { Migration20261129050000_thread_fillfactor } from './Migration20261129050000_thread_fillfactor.js';
import { Migration20261129060000_feed } from './Migration20261129060000_feed.js';
import { Migration20261130000000_notifications } from './Migration20261130000000_notifications.js';
import { Migration20261201000000_sessions } from './Migration20261201000000_sessions.js';
import { Migration20261202000000_governance } from './Migration20261202000000_governance.js';
import { Migration20261202010000_retraction_flag } from './Migration20261202010000_retraction_flag.js';

/** Every migration, in order. Committed; applied at start by `migrate()`, never `schema:update`. */
export const migrationsList: MigrationObject[] = [
  { name: 'Migration20261129000000_threads', class: Migration20261129000000_threads },
  { name: 'Migration20261129010000_messages', class: Migration20261129010000_messages },
  { name: 'Migration20261129020000_receipt_floor', class: Migration20261129020000_receipt_floor },
  { name: 'Migration20261129030000_one_statement_writes', class: Migration20261129030000_one_statement_writes },
  { name: 'Migration20261129040000_write_functions', class: Migration20261129040000_write_functions },
  { name: 'Migration20261129050000_thread_fillfactor', class: Migration20261129050000_thread_fillfactor },
  { name: 'Migration20261129060000_feed', class: Migration20261129060000_feed },
  { name: 'Migration20261130000000_notifications', class: Migration20261130000000_notifications },
  { name: 'Migration20261201000000_sessions', class: Migration20261201000000_sessions },
  { name: 'Migration20261202000000_governance', class: Migration20261202000000_governance },
  { name: 'Migration20261202010000_retraction_flag', class: Migration20261202010000_retraction_flag },
];
