//! The mesh half of the generated code, written after tonic's for each service (see
//! `generate::MeshServices`):
//! contract metadata constants, a caller that takes a [`RequestContext`], and typed event
//! publisher / handler / consumer.
//!
//! [`RequestContext`]: https://docs.rs/mesh-contract

use heck::{ToShoutySnakeCase, ToSnakeCase, ToUpperCamelCase};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

use crate::model::{Contract, Degraded, Method};

/// Rust source of the stubs for one contract, formatted.
pub fn render(contract: &Contract) -> String {
    let tokens = stubs(contract);
    let file: syn::File = syn::parse2(tokens).expect("generated stubs are valid Rust");
    prettyplease::unparse(&file)
}

fn stubs(contract: &Contract) -> TokenStream {
    let metadata = metadata(contract);
    let caller = caller(contract);
    let events = events(contract);
    quote! {
        #metadata
        #caller
        #events
    }
}

/// Path of a protobuf type as seen from the module of `contract.package`.
fn rust_type(contract: &Contract, full_name: &str, package: &str) -> TokenStream {
    if full_name == "google.protobuf.Empty" {
        return quote!(());
    }
    let local = full_name
        .strip_prefix(package)
        .map(|s| s.trim_start_matches('.'))
        .unwrap_or(full_name);
    let mut segments: Vec<TokenStream> = Vec::new();
    if package == "google.protobuf" {
        segments.push(quote!(::prost_types));
    } else if package != contract.package {
        let depth = contract.package.split('.').count();
        segments.extend((0..depth).map(|_| quote!(super)));
        segments.extend(package.split('.').map(|p| {
            let id = format_ident!("{}", p);
            quote!(#id)
        }));
    }
    let parts: Vec<&str> = local.split('.').collect();
    let (parents, name) = parts.split_at(parts.len() - 1);
    segments.extend(parents.iter().map(|p| {
        let id = format_ident!("{}", p.to_snake_case());
        quote!(#id)
    }));
    let name = format_ident!("{}", name[0].to_upper_camel_case());
    segments.push(quote!(#name));
    quote!(#(#segments)::*)
}

fn const_name(method: &Method) -> syn::Ident {
    format_ident!("{}", method.name.to_shouty_snake_case())
}

fn doc_lines(text: &str) -> TokenStream {
    let lines = text.lines().map(|l| format!(" {l}"));
    quote!(#(#[doc = #lines])*)
}

fn degraded(contract: &Contract, method: &Method) -> TokenStream {
    match &method.degraded {
        Some(Degraded::Empty) => quote!(::mesh_contract::DegradedAnswer::Empty),
        Some(Degraded::Cached { max_age_ms }) => {
            let ms = proc_macro2::Literal::u32_unsuffixed(*max_age_ms);
            quote!(::mesh_contract::DegradedAnswer::Cached {
                max_age: ::core::time::Duration::from_millis(#ms)
            })
        }
        Some(Degraded::Error { code, message }) => {
            let code = format_ident!("{}", code.to_upper_camel_case());
            quote!(::mesh_contract::DegradedAnswer::Error {
                code: ::tonic::Code::#code,
                message: #message,
            })
        }
        None => {
            let message = format!(
                "{}.{} is switched off",
                contract.service.full_name, method.name
            );
            quote!(::mesh_contract::DegradedAnswer::Error {
                code: ::tonic::Code::Unavailable,
                message: #message,
            })
        }
    }
}

fn metadata(contract: &Contract) -> TokenStream {
    let service = &contract.service;
    let name = &contract.name;
    let package = &contract.package;
    let full_name = &service.full_name;
    let version = service.version.to_string();
    let major = proc_macro2::Literal::u32_unsuffixed(contract.major);
    let tier = proc_macro2::Literal::u32_unsuffixed(service.tier);
    let owner = &service.owner;
    let capabilities = &service.capabilities;
    let module_doc = format!(
        " Contract metadata of `{}` (`contracts/{}`), read by the runtime: tier, deadlines, degraded answers, event routes.",
        service.full_name, contract.dir
    );

    let method_consts = contract.calls().map(|m| {
        let ident = const_name(m);
        let method_name = &m.name;
        let path = format!("/{}/{}", service.full_name, m.name);
        let (input, output) = (&m.input, &m.output);
        let (cs, ss) = (m.client_streaming, m.server_streaming);
        let timeout = proc_macro2::Literal::u32_unsuffixed(m.timeout_ms.unwrap_or_default());
        let degraded = degraded(contract, m);
        let mut audience = m
            .audience()
            .into_iter()
            .map(|a| format_ident!("{}", a.as_str()));
        let first = audience.next().expect("an audience is never empty");
        let doc = format!(" The `{}` call.", m.name);
        quote! {
            #[doc = #doc]
            pub const #ident: ::mesh_contract::MethodSpec = ::mesh_contract::MethodSpec {
                name: #method_name,
                path: #path,
                input: #input,
                output: #output,
                client_streaming: #cs,
                server_streaming: #ss,
                timeout: ::core::time::Duration::from_millis(#timeout),
                degraded: #degraded,
                audience: ::mesh_contract::Audience::#first #(.with(::mesh_contract::Audience::#audience))*,
            };
        }
    });
    let event_consts = contract.events().map(|m| {
        let ident = const_name(m);
        let event_name = &m.name;
        let routing_key = m.name.to_snake_case();
        let payload = &m.input;
        let timeout = match m.timeout_ms {
            Some(ms) => {
                let ms = proc_macro2::Literal::u32_unsuffixed(ms);
                quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms)))
            }
            None => quote!(::core::option::Option::None),
        };
        let degraded = degraded(contract, m);
        let doc = format!(" The `{}` event.", m.name);
        quote! {
            #[doc = #doc]
            pub const #ident: ::mesh_contract::EventSpec = ::mesh_contract::EventSpec {
                service: #name,
                major: #major,
                version: #version,
                name: #event_name,
                routing_key: #routing_key,
                payload: #payload,
                timeout: #timeout,
                degraded: #degraded,
            };
        }
    });
    let call_idents: Vec<_> = contract.calls().map(const_name).collect();
    let event_idents: Vec<_> = contract.events().map(const_name).collect();
    let (n_calls, n_events) = (
        proc_macro2::Literal::usize_unsuffixed(call_idents.len()),
        proc_macro2::Literal::usize_unsuffixed(event_idents.len()),
    );
    quote! {
        #[doc = #module_doc]
        pub mod contract {
            /// Everything the contract declares about the service.
            pub static SPEC: ::mesh_contract::ContractSpec = ::mesh_contract::ContractSpec {
                name: #name,
                package: #package,
                service: #full_name,
                version: #version,
                major: #major,
                tier: ::mesh_contract::Tier::of(#tier),
                owner: #owner,
                capabilities: &[#(#capabilities),*],
                methods: &METHODS,
                events: &EVENTS,
            };
            /// The calls, in declaration order.
            pub static METHODS: [::mesh_contract::MethodSpec; #n_calls] = [#(#call_idents),*];
            /// The events, in declaration order.
            pub static EVENTS: [::mesh_contract::EventSpec; #n_events] = [#(#event_idents),*];
            #(#method_consts)*
            #(#event_consts)*
        }
    }
}

fn caller(contract: &Contract) -> TokenStream {
    let calls: Vec<&Method> = contract.calls().collect();
    if calls.is_empty() {
        return quote!();
    }
    let proto_name = &contract.service.proto_name;
    let caller = format_ident!("{}Caller", proto_name);
    let client_mod = format_ident!("{}_client", proto_name.to_snake_case());
    let client = format_ident!("{}Client", proto_name);
    let doc = doc_lines(&format!(
        "Calls `{}` over HTTP/2 with a [`RequestContext`](::mesh_contract::RequestContext): the\ntenant, credential and trace context travel as metadata and each call carries the contract's\ndeadline.",
        contract.service.full_name
    ));
    let methods = calls.iter().map(|m| {
        let fn_name = format_ident!("{}", m.name.to_snake_case());
        let spec = const_name(m);
        let input = rust_type(contract, &m.input, &m.input_package);
        let output = rust_type(contract, &m.output, &m.output_package);
        let doc = doc_lines(if m.doc.is_empty() { &m.name } else { &m.doc });
        let (param, make_request) = if m.client_streaming {
            (
                quote!(request: impl ::tonic::IntoStreamingRequest<Message = #input>),
                quote!(let mut request = request.into_streaming_request();),
            )
        } else {
            (
                quote!(request: #input),
                quote!(let mut request = ::tonic::Request::new(request);),
            )
        };
        let ret = if m.server_streaming {
            quote!(::tonic::Streaming<#output>)
        } else {
            quote!(#output)
        };
        quote! {
            #doc
            pub async fn #fn_name(
                &mut self,
                ctx: &::mesh_contract::RequestContext,
                #param,
            ) -> ::core::result::Result<#ret, ::tonic::Status> {
                #make_request
                ctx.inject(request.metadata_mut())?;
                request.set_timeout(contract::#spec.timeout);
                self.inner.#fn_name(request).await.map(::tonic::Response::into_inner)
            }
        }
    });
    quote! {
        #doc
        #[derive(Debug, Clone)]
        pub struct #caller<T = ::tonic::transport::Channel> {
            inner: #client_mod::#client<T>,
        }

        impl<T> #caller<T>
        where
            T: ::tonic::client::GrpcService<::tonic::body::Body>,
            T::Error: ::core::convert::Into<::tonic::codegen::StdError>,
            T::ResponseBody: ::tonic::codegen::Body<Data = ::tonic::codegen::Bytes> + ::core::marker::Send + 'static,
            <T::ResponseBody as ::tonic::codegen::Body>::Error:
                ::core::convert::Into<::tonic::codegen::StdError> + ::core::marker::Send,
        {
            /// Wraps a transport, e.g. a `tonic::transport::Channel`.
            pub fn new(inner: T) -> Self {
                Self { inner: #client_mod::#client::new(inner) }
            }

            /// Wraps an already configured tonic client.
            pub fn from_client(inner: #client_mod::#client<T>) -> Self {
                Self { inner }
            }

            #(#methods)*
        }
    }
}

/// What the event stubs of one contract are called, and each event's pieces.
struct EventStubs {
    full: String,
    marker: syn::Ident,
    publisher: syn::Ident,
    handler: syn::Ident,
    consumer: syn::Ident,
    /// Per event, in contract order.
    payloads: Vec<TokenStream>,
    specs: Vec<syn::Ident>,
    names: Vec<String>,
    handler_fns: Vec<syn::Ident>,
    handler_docs: Vec<TokenStream>,
    decode_errors: Vec<String>,
}

/// The typed event stubs: a sealed marker of the contract's payloads, a publisher, a handler
/// trait and a consumer that decodes deliveries for it.
fn events(contract: &Contract) -> TokenStream {
    let events: Vec<&Method> = contract.events().collect();
    if events.is_empty() {
        return quote!();
    }
    let proto_name = &contract.service.proto_name;
    let stubs = EventStubs {
        full: contract.service.full_name.clone(),
        marker: format_ident!("{}Event", proto_name),
        publisher: format_ident!("{}Publisher", proto_name),
        handler: format_ident!("{}Handler", proto_name),
        consumer: format_ident!("{}Consumer", proto_name),
        payloads: events
            .iter()
            .map(|m| rust_type(contract, &m.input, &m.input_package))
            .collect(),
        specs: events.iter().map(|m| const_name(m)).collect(),
        names: events.iter().map(|m| m.name.clone()).collect(),
        handler_fns: events
            .iter()
            .map(|m| format_ident!("on_{}", m.name.to_snake_case()))
            .collect(),
        handler_docs: events
            .iter()
            .map(|m| doc_lines(if m.doc.is_empty() { &m.name } else { &m.doc }))
            .collect(),
        decode_errors: events
            .iter()
            .map(|m| format!("payload is not a valid {}: ", m.input))
            .collect(),
    };
    let marker = event_marker(&stubs);
    let publisher = event_publisher(&stubs);
    let handler = event_handler(&stubs);
    let consumer = event_consumer(&stubs);
    quote! {
        #marker
        #publisher
        #handler
        #consumer
    }
}

/// The sealed marker trait only the contract's payloads implement.
fn event_marker(stubs: &EventStubs) -> TokenStream {
    let EventStubs {
        full,
        marker,
        publisher,
        payloads,
        specs,
        ..
    } = stubs;
    let marker_doc = format!(" An event of `{full}`; only these can go through [`{publisher}`].");
    quote! {
        mod sealed {
            pub trait Sealed {}
            #(impl Sealed for super::#payloads {})*
        }

        #[doc = #marker_doc]
        pub trait #marker: ::mesh_contract::Event + sealed::Sealed {}

        #(
            impl ::mesh_contract::Event for #payloads {
                const SPEC: &'static ::mesh_contract::EventSpec = &contract::#specs;
            }
            impl #marker for #payloads {}
        )*
    }
}

/// The publisher of the contract's events on any bus.
fn event_publisher(stubs: &EventStubs) -> TokenStream {
    let EventStubs {
        full,
        marker,
        publisher,
        ..
    } = stubs;
    let publisher_doc = doc_lines(&format!(
        "Publishes `{full}` events on any [`EventBus`](::mesh_contract::EventBus), to the\nexchange of the context's tenant."
    ));
    quote! {
        #publisher_doc
        #[derive(Debug, Clone)]
        pub struct #publisher<B> {
            bus: B,
        }

        impl<B: ::mesh_contract::EventBus> #publisher<B> {
            /// A publisher on `bus`.
            pub fn new(bus: B) -> Self {
                Self { bus }
            }

            /// Publishes `event`; returns once the bus holds it durably.
            pub async fn publish<E: #marker>(
                &self,
                ctx: &::mesh_contract::RequestContext,
                event: E,
            ) -> ::core::result::Result<(), ::mesh_contract::BusError> {
                let payload = ::prost::Message::encode_to_vec(&event);
                self.bus.publish(ctx, E::SPEC, payload.into()).await
            }
        }
    }
}

/// The handler trait, one method per event, each acknowledging by default.
fn event_handler(stubs: &EventStubs) -> TokenStream {
    let EventStubs {
        full,
        handler,
        payloads,
        handler_fns,
        handler_docs,
        ..
    } = stubs;
    let handler_doc = doc_lines(&format!(
        "Handles `{full}` events. Every method defaults to acknowledging and ignoring the event,\nso a consumer only implements what it needs and an event added in a minor version does not\nbreak it. Return [`HandlerError::Retry`](::mesh_contract::HandlerError::Retry) for transient\nfailures and `Reject` for messages that can never succeed."
    ));
    quote! {
        #handler_doc
        pub trait #handler: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(
                #handler_docs
                fn #handler_fns(
                    &self,
                    ctx: &::mesh_contract::RequestContext,
                    event: #payloads,
                ) -> impl ::core::future::Future<Output = ::core::result::Result<(), ::mesh_contract::HandlerError>> + ::core::marker::Send {
                    let _ = (ctx, event);
                    ::core::future::ready(::core::result::Result::Ok(()))
                }
            )*
        }
    }
}

/// The consumer: decodes each delivery and routes it to the handler's method for its event.
fn event_consumer(stubs: &EventStubs) -> TokenStream {
    let EventStubs {
        full,
        handler,
        consumer,
        payloads,
        names,
        handler_fns,
        decode_errors,
        ..
    } = stubs;
    let consumer_doc = format!(" Decodes `{full}` deliveries and routes them to a [`{handler}`].");
    let unknown = format!("{full} has no event ");
    quote! {
        #[doc = #consumer_doc]
        pub struct #consumer<H> {
            handler: ::std::sync::Arc<H>,
        }

        impl<H: #handler> #consumer<H> {
            /// A consumer delivering to `handler`.
            pub fn new(handler: H) -> Self {
                Self { handler: ::std::sync::Arc::new(handler) }
            }

            /// Subscribes to every event of the contract for `tenant`, on the queue of `consumer`
            /// (the consuming service's name; its replicas share the queue).
            pub fn subscription(
                self,
                tenant: ::mesh_contract::TenantId,
                consumer: impl ::core::convert::Into<::std::string::String>,
            ) -> ::mesh_contract::Subscription {
                ::mesh_contract::Subscription {
                    tenant,
                    consumer: consumer.into(),
                    events: &contract::EVENTS,
                    dispatch: ::std::sync::Arc::new(self),
                }
            }
        }

        impl<H: #handler> ::mesh_contract::Dispatch for #consumer<H> {
            fn dispatch(
                &self,
                ctx: ::mesh_contract::RequestContext,
                event: &'static ::mesh_contract::EventSpec,
                payload: ::mesh_contract::bus::Bytes,
            ) -> ::mesh_contract::bus::BoxFuture<'static, ::core::result::Result<(), ::mesh_contract::HandlerError>> {
                let handler = ::std::sync::Arc::clone(&self.handler);
                match event.name {
                    #(
                        #names => match <#payloads as ::prost::Message>::decode(payload) {
                            ::core::result::Result::Ok(event) => {
                                ::std::boxed::Box::pin(async move { handler.#handler_fns(&ctx, event).await })
                            }
                            ::core::result::Result::Err(err) => ::std::boxed::Box::pin(::core::future::ready(
                                ::core::result::Result::Err(::mesh_contract::HandlerError::Reject(
                                    ::std::format!("{}{err}", #decode_errors),
                                )),
                            )),
                        },
                    )*
                    other => ::std::boxed::Box::pin(::core::future::ready(::core::result::Result::Err(
                        ::mesh_contract::HandlerError::Reject(::std::format!("{}{other:?}", #unknown)),
                    ))),
                }
            }
        }
    }
}
