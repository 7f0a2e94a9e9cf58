-- The baseline's row: one plain INSERT with a primary key and one unique key (as bench/baseline-server.ts).
insert into baseline_message values ('pb', gen_random_uuid(), '01900000-0000-7000-8000-000000000001', 'a',
  gen_random_uuid()::text, 'body body body body', now());
