-- SendMessage as it ran before notifications (issue 6): key lookup, thread row lock, insert, thread update,
-- feed events and NOTIFY, on 256 threads; no notification intent, no job.
\set t random(1, 256)
select comms_send_message_before_notifications('pb', ('01900000-0000-7000-8000-' || lpad(to_hex(:t), 12, '0'))::uuid, 'a',
  gen_random_uuid()::text, 'body body body body',
  '\x2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824'::bytea, null, gen_random_uuid(), now())
  is not null;
