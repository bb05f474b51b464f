-- Careweave's own tables (quarantine, receipts) live in their own database beside Temporal's.
CREATE USER careweave WITH PASSWORD 'careweave';
CREATE DATABASE careweave OWNER careweave;
