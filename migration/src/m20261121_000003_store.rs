//! The record store: customers, records (discs) and purchases.
//!
//! Case-insensitive matching uses `*_folded` columns, lowercased by the service (Rust's
//! Unicode lowercase), so SQLite and Postgres compare the same way and plain btree
//! indexes serve the exact matches (email uniqueness, genre). Money is BIGINT minor
//! units; stock and quantities are INTEGER. Indexes follow the list filters, each
//! ending in `id` because every list pages by keyset on id.
//!
//! Deliberately not indexed: `records.stock` (the `inStock` filter). Every purchase
//! changes `stock`; an index on it would make each decrement rewrite an index entry
//! (and, on Postgres, forbid heap-only updates, so every index of the row gets a new
//! entry per purchase). The record catalog is small next to purchases; `inStock`
//! filters while walking the primary key. Substring filters (artist, title, customer
//! search) cannot use a btree index on either backend.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
    Name,
    NameFolded,
    Email,
    EmailFolded,
    Active,
    CreatedAt,
    UpdatedAt,
    DeactivatedAt,
}

#[derive(DeriveIden)]
enum Records {
    Table,
    Id,
    Title,
    TitleFolded,
    Artist,
    ArtistFolded,
    Genre,
    GenreFolded,
    ReleaseYear,
    Price,
    Stock,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Purchases {
    Table,
    Id,
    CustomerId,
    RecordId,
    Quantity,
    UnitPrice,
    Total,
    Status,
    CreatedAt,
    CancelledAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Customers::Table)
                    .col(ColumnDef::new(Customers::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Customers::Name).string().not_null())
                    .col(ColumnDef::new(Customers::NameFolded).string().not_null())
                    .col(ColumnDef::new(Customers::Email).string().not_null())
                    .col(ColumnDef::new(Customers::EmailFolded).string().not_null())
                    .col(ColumnDef::new(Customers::Active).boolean().not_null().default(true))
                    .col(ColumnDef::new(Customers::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Customers::UpdatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Customers::DeactivatedAt).big_integer())
                    // A customer is inactive exactly when it has a deactivation time.
                    .check(Check::named(
                        "customers_active_matches_deactivated_at",
                        Expr::cust(
                            "(active AND deactivated_at IS NULL) OR (NOT active AND deactivated_at IS NOT NULL)",
                        ),
                    ))
                    .to_owned(),
            )
            .await?;
        // Uniqueness of the address regardless of case; deactivated customers keep theirs.
        manager
            .create_index(
                Index::create()
                    .name("customers_email_folded")
                    .table(Customers::Table)
                    .col(Customers::EmailFolded)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("customers_active_id")
                    .table(Customers::Table)
                    .col(Customers::Active)
                    .col(Customers::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Records::Table)
                    .col(ColumnDef::new(Records::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Records::Title).string().not_null())
                    .col(ColumnDef::new(Records::TitleFolded).string().not_null())
                    .col(ColumnDef::new(Records::Artist).string().not_null())
                    .col(ColumnDef::new(Records::ArtistFolded).string().not_null())
                    .col(ColumnDef::new(Records::Genre).string().not_null())
                    .col(ColumnDef::new(Records::GenreFolded).string().not_null())
                    .col(ColumnDef::new(Records::ReleaseYear).integer().not_null())
                    .col(ColumnDef::new(Records::Price).big_integer().not_null())
                    .col(ColumnDef::new(Records::Stock).integer().not_null())
                    .col(ColumnDef::new(Records::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Records::UpdatedAt).big_integer().not_null())
                    // The oversell guard of last resort: whatever the code does, stock
                    // cannot go below zero (nor past what the API's 32-bit Int can show).
                    .check(Check::named("records_stock_in_range", Expr::cust("stock >= 0 AND stock <= 2147483647")))
                    .check(Check::named("records_price_in_range", Expr::cust("price >= 0 AND price <= 2147483647")))
                    .to_owned(),
            )
            .await?;
        for (name, column) in
            [("records_genre_folded_id", Records::GenreFolded), ("records_release_year_id", Records::ReleaseYear)]
        {
            manager
                .create_index(Index::create().name(name).table(Records::Table).col(column).col(Records::Id).to_owned())
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(Purchases::Table)
                    .col(ColumnDef::new(Purchases::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Purchases::CustomerId).big_integer().not_null())
                    .col(ColumnDef::new(Purchases::RecordId).big_integer().not_null())
                    .col(ColumnDef::new(Purchases::Quantity).integer().not_null())
                    .col(ColumnDef::new(Purchases::UnitPrice).big_integer().not_null())
                    .col(ColumnDef::new(Purchases::Total).big_integer().not_null())
                    .col(ColumnDef::new(Purchases::Status).string_len(16).not_null())
                    .col(ColumnDef::new(Purchases::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Purchases::CancelledAt).big_integer())
                    .foreign_key(
                        ForeignKey::create()
                            .name("purchases_customer")
                            .from(Purchases::Table, Purchases::CustomerId)
                            .to(Customers::Table, Customers::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("purchases_record")
                            .from(Purchases::Table, Purchases::RecordId)
                            .to(Records::Table, Records::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .check(Check::named("purchases_quantity_positive", Expr::cust("quantity >= 1")))
                    .check(Check::named(
                        "purchases_total_is_price_times_quantity",
                        Expr::cust("unit_price >= 0 AND total = unit_price * quantity AND total <= 2147483647"),
                    ))
                    .check(Check::named(
                        "purchases_status_known",
                        Expr::cust("status IN ('EFFECTIVE', 'OUT_OF_STOCK', 'CANCELLED')"),
                    ))
                    .check(Check::named(
                        "purchases_cancelled_at_matches_status",
                        Expr::cust(
                            "(status = 'CANCELLED' AND cancelled_at IS NOT NULL) OR (status <> 'CANCELLED' AND cancelled_at IS NULL)",
                        ),
                    ))
                    .to_owned(),
            )
            .await?;
        // One index per purchase filter, each continuing with id for the keyset page;
        // the first two also serve the foreign keys.
        for (name, column) in [
            ("purchases_customer_id_id", Purchases::CustomerId),
            ("purchases_record_id_id", Purchases::RecordId),
            ("purchases_created_at_id", Purchases::CreatedAt),
            ("purchases_status_id", Purchases::Status),
        ] {
            manager
                .create_index(
                    Index::create().name(name).table(Purchases::Table).col(column).col(Purchases::Id).to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Purchases::Table.into_iden(), Records::Table.into_iden(), Customers::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
