//! `products`: one row per catalog product.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "products")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "String(StringLen::N(100))", nullable, unique)]
    pub sku: Option<String>,
    #[sea_orm(column_type = "String(StringLen::N(200))")]
    pub name: String,
    #[sea_orm(column_type = "Text")]
    pub description: String,
    /// JSON text of an object.
    #[sea_orm(column_type = "Text", nullable)]
    pub attributes: Option<String>,
    #[sea_orm(column_type = "String(StringLen::N(16))")]
    pub registration_status: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub registration_error: Option<String>,
    pub registered_at: Option<i64>,
    pub offers_synced_at: Option<i64>,
    /// The lowest price of the current offers (minor units), null without offers: kept
    /// by the offer sync with the offers, so `orderBy: LOWEST_PRICE` can use an index.
    pub lowest_price: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::offer::Entity")]
    Offer,
    #[sea_orm(has_many = "super::price_history::Entity")]
    PriceHistory,
}

impl Related<super::offer::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Offer.def()
    }
}

impl Related<super::price_history::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::PriceHistory.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
