//! The published schema documents itself: every type, field, argument, input field and
//! enum value a client can see has a description (GraphiQL, IDEs and code generators
//! show them), so `schema.graphql` is enough to write a frontend against.

use async_graphql::{
    Positioned,
    parser::{
        parse_schema,
        types::{FieldDefinition, InputValueDefinition, TypeKind, TypeSystemDefinition},
    },
};

/// The specification's scalars, described by the specification itself.
const BUILT_IN_SCALARS: [&str; 5] = ["String", "Int", "Float", "Boolean", "ID"];

/// One schema element without a description: what it is and where.
struct Missing {
    kind: &'static str,
    path: String,
}

fn described(description: Option<&Positioned<String>>) -> bool {
    description.is_some_and(|description| !description.node.trim().is_empty())
}

fn check_arguments(owner: &str, arguments: &[Positioned<InputValueDefinition>], missing: &mut Vec<Missing>) {
    for argument in arguments {
        if !described(argument.node.description.as_ref()) {
            missing.push(Missing { kind: "argument", path: format!("{owner}({})", argument.node.name.node) });
        }
    }
}

fn check_fields(type_name: &str, fields: &[Positioned<FieldDefinition>], missing: &mut Vec<Missing>) {
    for field in fields {
        let path = format!("{type_name}.{}", field.node.name.node);
        if !described(field.node.description.as_ref()) {
            missing.push(Missing { kind: "field", path: path.clone() });
        }
        check_arguments(&path, &field.node.arguments, missing);
    }
}

/// Every undocumented element of `sdl`, in the order the SDL lists them.
fn undocumented(sdl: &str) -> Vec<Missing> {
    let document = parse_schema(sdl).unwrap_or_else(|error| panic!("the SDL does not parse: {error}"));
    let mut missing = Vec::new();
    for definition in &document.definitions {
        // Directive definitions are the specification's (`@skip`, `@include`, `@specifiedBy`).
        let TypeSystemDefinition::Type(definition) = definition else { continue };
        let definition = &definition.node;
        let name = definition.name.node.as_str();
        if BUILT_IN_SCALARS.contains(&name) || name.starts_with("__") {
            continue;
        }
        if !described(definition.description.as_ref()) {
            missing.push(Missing { kind: "type", path: name.to_string() });
        }
        match &definition.kind {
            TypeKind::Object(object) => check_fields(name, &object.fields, &mut missing),
            TypeKind::Interface(interface) => check_fields(name, &interface.fields, &mut missing),
            TypeKind::InputObject(input) => {
                for field in &input.fields {
                    if !described(field.node.description.as_ref()) {
                        missing.push(Missing { kind: "input field", path: format!("{name}.{}", field.node.name.node) });
                    }
                }
            }
            TypeKind::Enum(enumeration) => {
                for value in &enumeration.values {
                    if !described(value.node.description.as_ref()) {
                        missing.push(Missing { kind: "enum value", path: format!("{name}.{}", value.node.value.node) });
                    }
                }
            }
            TypeKind::Scalar | TypeKind::Union(_) => {}
        }
    }
    missing
}

#[test]
fn every_type_field_argument_input_field_and_enum_value_is_described() {
    let missing = undocumented(&emporium::graphql::sdl());
    if missing.is_empty() {
        return;
    }
    let tally: Vec<String> = ["type", "field", "argument", "input field", "enum value"]
        .into_iter()
        .map(|kind| format!("{} {kind}s", missing.iter().filter(|item| item.kind == kind).count()))
        .collect();
    let list: Vec<String> = missing.iter().map(|item| format!("  {} {}", item.kind, item.path)).collect();
    panic!(
        "{} schema elements have no description ({}); add a doc comment (`///`) or \
         `#[graphql(desc = \"…\")]` to each:\n{}",
        missing.len(),
        tally.join(", "),
        list.join("\n")
    );
}

#[test]
fn the_check_sees_what_is_missing() {
    let sdl = r#"
        "Described." type Query { "Described." a(x: Int): Int b: Int }
        input Filter { "Described." c: Int d: Int }
        "  " enum Kind { "Described." E F }
        scalar String
    "#;
    let found: Vec<String> = undocumented(sdl).into_iter().map(|item| format!("{} {}", item.kind, item.path)).collect();
    assert_eq!(
        found,
        [
            "argument Query.a(x)",
            "field Query.b",
            "type Filter",
            "input field Filter.d",
            "type Kind",
            "enum value Kind.F"
        ]
    );
}
