import { Migration } from '@mikro-orm/migrations';

/**
 * Every send rewrites its thread's row (message_seq, last message, activity) without touching an
 * indexed column: leave room on each page so those updates stay HOT (no index writes).
 */
export class Migration20261129050000_thread_fillfactor extends Migration {
  override name = 'Migration20261129050000_thread_fillfactor';

  override up(): void {
    this.addSql('alter table thread set (fillfactor = 70)');
  }

  override down(): void {
    this.addSql('alter table thread reset (fillfactor)');
  }
}
