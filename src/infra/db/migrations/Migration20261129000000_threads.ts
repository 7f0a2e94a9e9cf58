import { Migration } from '@mikro-orm/migrations';

/**
 * Threads and their participants. Every table carries tenant_id, and it leads every primary, unique and
 * foreign key, so the schema can be distributed by tenant (Citus) without a redesign.
 */
export class Migration20261129000000_threads extends Migration {
  override name = 'Migration20261129000000_threads';

  override up(): void {
    this.addSql(`
      create table thread (
        tenant_id           text        not null,
        thread_id           uuid        not null,
        subject             text        not null check (char_length(subject) between 1 and 200),
        state               text        not null check (state in ('active', 'archived')),
        created_by          text        not null,
        created_at          timestamptz not null,
        updated_at          timestamptz not null,
        last_activity_at    timestamptz not null,
        archived_at         timestamptz,
        escalation_level    text        not null default 'none'
                            check (escalation_level in ('none', 'elevated', 'urgent', 'emergency')),
        escalation_assignee text,
        escalation_reason   text,
        escalated_by        text,
        escalated_at        timestamptz,
        create_request_id   text,
        version             integer     not null default 1 check (version >= 1),
        primary key (tenant_id, thread_id),
        constraint thread_archived_at_matches_state check ((state = 'archived') = (archived_at is not null)),
        constraint thread_escalation_has_assignee
          check ((escalation_level = 'none') = (escalation_assignee is null))
      )`);
    this.addSql(`
      create unique index thread_create_request_uq
        on thread (tenant_id, created_by, create_request_id) where create_request_id is not null`);
    this.addSql(`
      create table thread_participant (
        tenant_id text        not null,
        thread_id uuid        not null,
        user_id   text        not null check (char_length(user_id) between 1 and 128),
        role      text        not null
                  check (role in ('patient', 'provider', 'care_staff', 'family', 'interpreter')),
        added_at  timestamptz not null,
        added_by  text        not null,
        primary key (tenant_id, thread_id, user_id),
        foreign key (tenant_id, thread_id) references thread (tenant_id, thread_id) on delete cascade
      )`);
    // ListThreads: the caller's threads within a tenant.
    this.addSql('create index thread_participant_by_user on thread_participant (tenant_id, user_id, thread_id)');
  }

  override down(): void {
    this.addSql('drop table thread_participant');
    this.addSql('drop table thread');
  }
}
