//! The catalog: products (with their registration at the partner offers service), the
//! offers the service reports for them, and the price history of those offers.
//!
//! Offers are replaced by every sync (vanished ones are deleted); the history is keyed by
//! product and the service's offer id, not by our offer row, so it outlives the offer.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    Sku,
    Name,
    Description,
    Attributes,
    RegistrationStatus,
    RegistrationError,
    RegisteredAt,
    OffersSyncedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Offers {
    Table,
    Id,
    ProductId,
    SourceId,
    Price,
    ItemsInStock,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PriceHistory {
    Table,
    Id,
    ProductId,
    OfferSourceId,
    Price,
    RecordedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Products::Table)
                    .col(ColumnDef::new(Products::Id).big_integer().not_null().auto_increment().primary_key())
                    // Optional client key (bulk uploads upsert by it); unique when present.
                    .col(ColumnDef::new(Products::Sku).string_len(100).unique_key())
                    .col(ColumnDef::new(Products::Name).string_len(200).not_null())
                    .col(ColumnDef::new(Products::Description).text().not_null().default(""))
                    // The other fields of an uploaded item, as JSON text.
                    .col(ColumnDef::new(Products::Attributes).text())
                    .col(ColumnDef::new(Products::RegistrationStatus).string_len(16).not_null().default("pending"))
                    .col(ColumnDef::new(Products::RegistrationError).text())
                    .col(ColumnDef::new(Products::RegisteredAt).big_integer())
                    // When the offers snapshot applied last was fetched: an older snapshot
                    // arriving late is skipped instead of rolling prices back.
                    .col(ColumnDef::new(Products::OffersSyncedAt).big_integer())
                    .col(ColumnDef::new(Products::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Products::UpdatedAt).big_integer().not_null())
                    .check(Expr::cust("length(name) BETWEEN 1 AND 200"))
                    .check(Expr::cust("length(description) <= 10000"))
                    .check(Expr::cust("sku IS NULL OR length(sku) BETWEEN 1 AND 100"))
                    .check(Expr::cust("registration_status IN ('pending', 'registered', 'failed')"))
                    .to_owned(),
            )
            .await?;
        // The sync walks registered products in id order.
        manager
            .create_index(
                Index::create()
                    .name("products_registration_status_id")
                    .table(Products::Table)
                    .col(Products::RegistrationStatus)
                    .col(Products::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Offers::Table)
                    .col(ColumnDef::new(Offers::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(Offers::ProductId).big_integer().not_null())
                    // The offers service's id of the offer.
                    .col(ColumnDef::new(Offers::SourceId).string_len(200).not_null())
                    .col(ColumnDef::new(Offers::Price).big_integer().not_null())
                    .col(ColumnDef::new(Offers::ItemsInStock).big_integer().not_null())
                    .col(ColumnDef::new(Offers::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Offers::UpdatedAt).big_integer().not_null())
                    .check(Expr::cust("price >= 0"))
                    .check(Expr::cust("items_in_stock >= 0"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("offers_product_id_fk")
                            .from(Offers::Table, Offers::ProductId)
                            .to(Products::Table, Products::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // One row per offer of a product; also serves "offers of these products".
        manager
            .create_index(
                Index::create()
                    .name("offers_product_id_source_id")
                    .table(Offers::Table)
                    .col(Offers::ProductId)
                    .col(Offers::SourceId)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PriceHistory::Table)
                    .col(ColumnDef::new(PriceHistory::Id).big_integer().not_null().auto_increment().primary_key())
                    .col(ColumnDef::new(PriceHistory::ProductId).big_integer().not_null())
                    .col(ColumnDef::new(PriceHistory::OfferSourceId).string_len(200).not_null())
                    // NULL marks the offer's withdrawal, so the product's lowest price
                    // over time stops counting it from then on.
                    .col(ColumnDef::new(PriceHistory::Price).big_integer())
                    .col(ColumnDef::new(PriceHistory::RecordedAt).big_integer().not_null())
                    .check(Expr::cust("price IS NULL OR price >= 0"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("price_history_product_id_fk")
                            .from(PriceHistory::Table, PriceHistory::ProductId)
                            .to(Products::Table, Products::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("price_history_product_offer_recorded")
                    .table(PriceHistory::Table)
                    .col(PriceHistory::ProductId)
                    .col(PriceHistory::OfferSourceId)
                    .col(PriceHistory::RecordedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("price_history_product_recorded")
                    .table(PriceHistory::Table)
                    .col(PriceHistory::ProductId)
                    .col(PriceHistory::RecordedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [PriceHistory::Table.into_iden(), Offers::Table.into_iden(), Products::Table.into_iden()] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
