import { Migration } from '@mikro-orm/migrations';

/**
 * `thread.has_retraction`: set by the first retraction of one of the thread's messages (in its
 * transaction), never cleared. ListMessages reads a page without joining `message_retraction` unless the
 * thread has one: the join cost a page about 10 % of its throughput (bench/README.md).
 */
export class Migration20261202010000_retraction_flag extends Migration {
  override name = 'Migration20261202010000_retraction_flag';

  override up(): void {
    this.addSql('alter table thread add column has_retraction boolean not null default false');
    this.addSql(`
      update thread t set has_retraction = true
       where exists (select 1 from message_retraction r where r.tenant_id = t.tenant_id and r.thread_id = t.thread_id)`);
  }

  override down(): void {
    this.addSql('alter table thread drop column has_retraction');
  }
}
