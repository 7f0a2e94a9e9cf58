-- Only the message row: four indexes (primary key, per-thread seq, idempotency key, per-sender) and the
-- foreign key to its thread, without the thread lock and update.
\set t random(1, 256)
\set s random(100000000, 2000000000)
insert into message (tenant_id, message_id, thread_id, seq, sender_user_id, client_mutation_id, body, body_sha256,
                     client_sent_at, sent_at)
values ('pb', gen_random_uuid(), ('01900000-0000-7000-8000-' || lpad(to_hex(:t), 12, '0'))::uuid, :s, 'a',
        gen_random_uuid()::text, 'body body body body',
        '\x2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824'::bytea, null, now())
on conflict do nothing;
