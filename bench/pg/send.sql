-- A whole SendMessage as the service runs it: one call of comms_send_message (key lookup, thread row lock,
-- insert, thread update, feed events and NOTIFY, the other participant's notification intent and its
-- pg-boss job), on 256 two-party threads.
\set t random(1, 256)
select comms_send_message('pb', ('01900000-0000-7000-8000-' || lpad(to_hex(:t), 12, '0'))::uuid, 'a',
  gen_random_uuid()::text, 'body body body body',
  '\x2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824'::bytea, null, gen_random_uuid(), now())
  is not null;
