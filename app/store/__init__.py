"""PostgreSQL access: connection, migrations, repositories."""
