-- Reference data of every tenant: its roles and what they may do.
-- `*` grants everything; `customers:*` every customers permission.
INSERT INTO roles (name, permissions) VALUES
    ('admin',  '{*}'),
    ('member', '{customers:*,products:*,orders:*}'),
    ('viewer', '{customers:read,products:read,orders:read}');
