//! `#[verdant_loadable::interface]`: makes a trait callable across the dlopen boundary
//! without letting a library panic abort the host.
//!
//! Use it through the `verdant-loadable` crate (`#[verdant_loadable::interface]`),
//! in the crate that defines the interface; that crate must depend on
//! `verdant-loadable` directly, because the expansion refers to
//! `::verdant_loadable`. See `verdant_loadable::interface` for what it
//! generates.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::visit_mut::{self, VisitMut};
use syn::{
    parse_macro_input, FnArg, GenericArgument, GenericParam, ImplItem, Item, ItemImpl, ItemTrait, Lifetime,
    LifetimeParam, PathArguments, ReturnType, TraitItem, TraitItemFn, Type, TypeParamBound,
};

/// See `verdant_loadable::interface`.
#[proc_macro_attribute]
pub fn interface(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = TokenStream2::from(attr);
        return syn::Error::new(attr.span(), "#[verdant_loadable::interface] takes no arguments")
            .to_compile_error()
            .into();
    }
    let item = parse_macro_input!(item as Item);
    let expanded = match &item {
        Item::Trait(item) => expand(item),
        Item::Impl(item) => Ok(expand_impl(item)),
        other => Err(syn::Error::new(
            other.span(),
            "#[verdant_loadable::interface] goes on the interface trait, or on an impl of it that has `async fn`s",
        )),
    };
    match expanded {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// On an impl: `async fn`s become boxed futures, as in the trait.
fn expand_impl(item: &ItemImpl) -> TokenStream2 {
    let has_async = item.items.iter().any(|i| matches!(i, ImplItem::Fn(f) if f.sig.asyncness.is_some()));
    if has_async {
        quote!(#[::verdant_loadable::__private::async_trait] #item)
    } else {
        quote!(#item)
    }
}

/// How a method crosses the boundary.
enum Kind {
    /// A plain call.
    Sync,
    /// `async fn`: the library's future is polled under the guard.
    Async,
    /// Returns an `axum::Router`: the router is wrapped library-side and
    /// served through a guarded service.
    Router,
}

fn expand(item: &ItemTrait) -> syn::Result<TokenStream2> {
    check_trait(item)?;
    let trait_name = &item.ident;
    let vis = &item.vis;
    let boundary = format_ident!("__VerdantBoundary{}", trait_name);
    let proxy = format_ident!("__VerdantProxy{}", trait_name);

    let mut boundary_decls = Vec::new();
    let mut boundary_impls = Vec::new();
    let mut proxy_impls = Vec::new();
    let mut proxy_fields = Vec::new();
    let mut proxy_inits = Vec::new();
    let mut any_async = false;
    for entry in &item.items {
        let method = match entry {
            TraitItem::Fn(method) => method,
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "a verdant interface may only contain methods (associated types and \
                     constants cannot cross the library boundary)",
                ))
            }
        };
        let arg_types = check_method(method)?;
        let kind = kind_of(method)?;
        let name = &method.sig.ident;
        let name_text = name.to_string();
        let generics = &method.sig.generics;
        let args: Vec<_> = (0..arg_types.len()).map(|i| format_ident!("__verdant_arg{}", i)).collect();
        let output = match &method.sig.output {
            ReturnType::Default => quote!(()),
            ReturnType::Type(_, ty) => quote!(#ty),
        };
        let user_output = &method.sig.output;
        let deliver = quote! {
            {
                #[allow(unused_imports)]
                use ::verdant_loadable::__private::{DeliverAsError as _, DeliverAsPanic as _};
                let selector = &::verdant_loadable::__private::Deliver::<#output>::new();
                selector.deliver(panic, &self.__verdant_context, #name_text)
            }
        };
        let boundary_ref = quote! {
            // SAFETY: `Interface::proxy`'s contract: the boundary object
            // outlives this proxy.
            let boundary: &(dyn #boundary) = unsafe { &*self.__verdant_boundary };
        };
        match kind {
            Kind::Sync => {
                boundary_decls.push(quote! {
                    fn #name #generics (&self, #(#args: #arg_types),*)
                        -> ::core::result::Result<#output, ::verdant_loadable::boundary::Panic>;
                });
                boundary_impls.push(quote! {
                    fn #name #generics (&self, #(#args: #arg_types),*)
                        -> ::core::result::Result<#output, ::verdant_loadable::boundary::Panic>
                    {
                        ::verdant_loadable::boundary::call(move || <__VerdantT as #trait_name>::#name(self, #(#args),*))
                    }
                });
                proxy_impls.push(quote! {
                    fn #name #generics (&self, #(#args: #arg_types),*) #user_output {
                        #boundary_ref
                        match <dyn #boundary as #boundary>::#name(boundary, #(#args),*) {
                            ::core::result::Result::Ok(value) => value,
                            ::core::result::Result::Err(panic) => #deliver,
                        }
                    }
                });
            }
            Kind::Async => {
                any_async = true;
                // A plain `fn` that returns the guarded future itself: the
                // host holds nothing but the future `guard_future` made, so
                // creating the library's future, every poll and the drop
                // (arguments included, even before the first poll) run
                // under the guard, in one box.
                let AsyncSignature { generics: b_generics, arg_types: b_arg_types, where_clause } =
                    async_signature(method, &arg_types);
                boundary_decls.push(quote! {
                    fn #name #b_generics (&'__verdant self, #(#args: #b_arg_types),*)
                        -> ::verdant_loadable::boundary::BoundaryFuture<'__verdant, #output>
                        #where_clause;
                });
                boundary_impls.push(quote! {
                    fn #name #b_generics (&'__verdant self, #(#args: #b_arg_types),*)
                        -> ::verdant_loadable::boundary::BoundaryFuture<'__verdant, #output>
                        #where_clause
                    {
                        ::verdant_loadable::boundary::guard_future(move || <__VerdantT as #trait_name>::#name(self, #(#args),*))
                    }
                });
                proxy_impls.push(quote! {
                    async fn #name #generics (&self, #(#args: #arg_types),*) #user_output {
                        #boundary_ref
                        match <dyn #boundary as #boundary>::#name(boundary, #(#args),*).await {
                            ::core::result::Result::Ok(value) => value,
                            ::core::result::Result::Err(panic) => #deliver,
                        }
                    }
                });
            }
            Kind::Router => {
                boundary_decls.push(quote! {
                    fn #name #generics (&self, #(#args: #arg_types),*)
                        -> ::core::result::Result<::verdant_loadable::router::LibraryRouter, ::verdant_loadable::boundary::Panic>;
                });
                boundary_impls.push(quote! {
                    fn #name #generics (&self, #(#args: #arg_types),*)
                        -> ::core::result::Result<::verdant_loadable::router::LibraryRouter, ::verdant_loadable::boundary::Panic>
                    {
                        ::verdant_loadable::boundary::call(move || {
                            let router: ::verdant_loadable::__private::Router = <__VerdantT as #trait_name>::#name(self, #(#args),*);
                            ::verdant_loadable::router::LibraryRouter::new(router)
                        })
                    }
                });
                // The router is handed out together with its service
                // (`LibraryRoutes`), which the proxy offers to a host that
                // captures it (`verdant::axum::Pipeline::library_routes`) to
                // call the service without routing through the router again.
                // A panic is delivered as the method's return type says (a
                // router cannot be an error), so it re-raises before any
                // offer.
                let deliver = quote! {
                    {
                        #[allow(unused_imports)]
                        use ::verdant_loadable::__private::{DeliverAsError as _, DeliverAsPanic as _};
                        let selector = &::verdant_loadable::__private::Deliver::<::verdant_loadable::router::LibraryRoutes>::new();
                        selector.deliver(panic, &self.__verdant_context, #name_text)
                    }
                };
                let build = quote! {
                    #boundary_ref
                    match <dyn #boundary as #boundary>::#name(boundary, #(#args),*) {
                        ::core::result::Result::Ok(library) => library.into_routes(&self.__verdant_context),
                        ::core::result::Result::Err(panic) => #deliver,
                    }
                };
                if args.is_empty() {
                    // One router per version: built on first use, then cloned
                    // (an `Arc` clone) for every request.
                    let cache = format_ident!("__verdant_router_{}", name);
                    proxy_fields
                        .push(quote!(#cache: ::std::sync::OnceLock<::verdant_loadable::router::LibraryRoutes>,));
                    proxy_inits.push(quote!(#cache: ::std::sync::OnceLock::new(),));
                    proxy_impls.push(quote! {
                        fn #name #generics (&self) #user_output {
                            let routes = self.#cache.get_or_init(|| { #build });
                            routes.offer();
                            routes.router()
                        }
                    });
                } else {
                    proxy_impls.push(quote! {
                        fn #name #generics (&self, #(#args: #arg_types),*) #user_output {
                            let routes: ::verdant_loadable::router::LibraryRoutes = { #build };
                            routes.offer();
                            routes.router()
                        }
                    });
                }
            }
        }
    }

    let async_attr = if any_async { quote!(#[::verdant_loadable::__private::async_trait]) } else { quote!() };
    let boundary_doc = format!(
        "Panic-guarded form of [`{trait_name}`] that crosses the library boundary \
         (generated by `#[verdant_loadable::interface]`)."
    );
    let proxy_doc = format!(
        "Host-side proxy implementing [`{trait_name}`] over its boundary object \
         (generated by `#[verdant_loadable::interface]`)."
    );
    Ok(quote! {
        #async_attr
        #item

        #[doc = #boundary_doc]
        #[doc(hidden)]
        #vis trait #boundary: ::core::marker::Send + ::core::marker::Sync {
            #(#boundary_decls)*
        }

        impl<__VerdantT: #trait_name> #boundary for __VerdantT {
            #(#boundary_impls)*
        }

        #[doc = #proxy_doc]
        #[doc(hidden)]
        #vis struct #proxy {
            __verdant_boundary: *const (dyn #boundary + 'static),
            __verdant_context: ::verdant_loadable::ProxyContext,
            #(#proxy_fields)*
        }

        // SAFETY: the boundary trait requires Send + Sync of the object the
        // pointer refers to, and the proxy only ever reads through it.
        unsafe impl ::core::marker::Send for #proxy {}
        // SAFETY: as above.
        unsafe impl ::core::marker::Sync for #proxy {}

        #async_attr
        impl #trait_name for #proxy {
            #(#proxy_impls)*
        }

        // SAFETY: the proxy calls only through the boundary trait; the
        // registry drops the proxy before the boundary object; routers it
        // hands out pin the version per request (`ProxyContext::pin`).
        unsafe impl ::verdant_loadable::Interface for dyn #trait_name {
            type Boundary = dyn #boundary;

            unsafe fn proxy(
                boundary: *const (dyn #boundary + 'static),
                context: ::verdant_loadable::ProxyContext,
            ) -> ::std::boxed::Box<Self> {
                ::std::boxed::Box::new(#proxy {
                    __verdant_boundary: boundary,
                    __verdant_context: context,
                    #(#proxy_inits)*
                })
            }
        }
    })
}

/// The generics, argument types and where clause of the boundary method of
/// an `async fn`, whose returned future borrows `self` and every argument:
/// each lifetime of the arguments is named (elided ones become
/// `'__verdant_lifeN`) and must outlive `'__verdant`, the lifetime of
/// `self` and of the future. This is what `async_trait` does for the
/// interface trait's own method, whose future the boundary wraps.
struct AsyncSignature {
    generics: TokenStream2,
    arg_types: Vec<Type>,
    where_clause: TokenStream2,
}

fn async_signature(method: &TraitItemFn, arg_types: &[Type]) -> AsyncSignature {
    let mut namer = NameElided { named: Vec::new() };
    let arg_types = arg_types
        .iter()
        .map(|ty| {
            let mut ty = ty.clone();
            namer.visit_type_mut(&mut ty);
            ty
        })
        .collect();
    let declared: Vec<&LifetimeParam> = method.sig.generics.lifetimes().collect();
    let named = &namer.named;
    let outlive = declared.iter().map(|param| &param.lifetime).chain(named);
    AsyncSignature {
        generics: quote!(<'__verdant, #(#declared,)* #(#named),*>),
        arg_types,
        where_clause: quote!(where #(#outlive: '__verdant),*),
    }
}

/// Names the elided lifetimes of an argument type (`&T`, `'_`), everywhere,
/// inside `fn(&str)` and `Fn(&str)` too: `async_trait` names the same ones
/// in the interface trait and the proxy, and the proxy passes its arguments,
/// typed that way, on to the boundary method (a higher-ranked `fn(&str)`
/// there would be more general than the proxy's and refuse them).
struct NameElided {
    named: Vec<Lifetime>,
}

impl NameElided {
    fn name(&mut self, span: proc_macro2::Span) -> Lifetime {
        let lifetime = Lifetime::new(&format!("'__verdant_life{}", self.named.len()), span);
        self.named.push(lifetime.clone());
        lifetime
    }
}

impl VisitMut for NameElided {
    fn visit_type_reference_mut(&mut self, reference: &mut syn::TypeReference) {
        if reference.lifetime.is_none() {
            reference.lifetime = Some(self.name(reference.and_token.span()));
        }
        visit_mut::visit_type_reference_mut(self, reference);
    }

    fn visit_lifetime_mut(&mut self, lifetime: &mut Lifetime) {
        if lifetime.ident == "_" {
            *lifetime = self.name(lifetime.span());
        }
    }
}

/// Whether `ty` names a router (a path ending in `Router`, without type
/// arguments other than `()`).
fn is_router(ty: &Type) -> bool {
    let Type::Path(path) = ty else { return false };
    let Some(last) = path.path.segments.last() else { return false };
    if last.ident != "Router" {
        return false;
    }
    match &last.arguments {
        PathArguments::None => true,
        PathArguments::AngleBracketed(args) => {
            args.args.len() == 1
                && matches!(args.args.first(), Some(GenericArgument::Type(Type::Tuple(t))) if t.elems.is_empty())
        }
        PathArguments::Parenthesized(_) => false,
    }
}

/// Whether a router appears anywhere inside `ty` (an `Option<Router>`, a
/// `Vec<Router>`): such a router would cross unguarded.
fn mentions_router(ty: &Type) -> bool {
    fn walk(tokens: TokenStream2) -> bool {
        tokens.into_iter().any(|token| match token {
            proc_macro2::TokenTree::Ident(ident) => ident == "Router",
            proc_macro2::TokenTree::Group(group) => walk(group.stream()),
            _ => false,
        })
    }
    walk(quote!(#ty))
}

fn kind_of(method: &TraitItemFn) -> syn::Result<Kind> {
    let output = match &method.sig.output {
        ReturnType::Default => None,
        ReturnType::Type(_, ty) => Some(&**ty),
    };
    let router = output.is_some_and(is_router);
    if method.sig.asyncness.is_some() {
        if output.is_some_and(mentions_router) {
            return Err(syn::Error::new(
                method.sig.output.span(),
                "a method that returns a router must be a plain (not async) `fn ...(&self) -> axum::Router`",
            ));
        }
        return Ok(Kind::Async);
    }
    if router {
        return Ok(Kind::Router);
    }
    if output.is_some_and(mentions_router) {
        return Err(syn::Error::new(
            method.sig.output.span(),
            "a router can only cross the library boundary as the whole return type \
             (`-> axum::Router`), where verdant wraps it; inside another type it would \
             reach the host unguarded",
        ));
    }
    Ok(Kind::Sync)
}

fn check_trait(item: &ItemTrait) -> syn::Result<()> {
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            item.generics.span(),
            "a verdant interface cannot be generic: the host and the library must agree on one \
             concrete trait object type",
        ));
    }
    if item.unsafety.is_some() || item.auto_token.is_some() {
        return Err(syn::Error::new(item.ident.span(), "a verdant interface must be a plain safe trait"));
    }
    let (mut send, mut sync) = (false, false);
    for bound in &item.supertraits {
        match bound {
            TypeParamBound::Trait(t) if t.path.is_ident("Send") => send = true,
            TypeParamBound::Trait(t) if t.path.is_ident("Sync") => sync = true,
            TypeParamBound::Lifetime(l) if l.ident == "static" => {}
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "a verdant interface may only have `Send`, `Sync` and `'static` as supertraits",
                ))
            }
        }
    }
    if !(send && sync) {
        return Err(syn::Error::new(
            item.ident.span(),
            "a verdant interface is shared between threads: declare it as `trait Name: Send + Sync`",
        ));
    }
    Ok(())
}

/// Checks that the method can go through a trait object and returns its
/// argument types (without the receiver).
fn check_method(method: &TraitItemFn) -> syn::Result<Vec<syn::Type>> {
    let sig = &method.sig;
    if sig.unsafety.is_some() || sig.abi.is_some() || sig.variadic.is_some() {
        return Err(syn::Error::new(sig.span(), "a verdant interface method must be a plain safe fn"));
    }
    if let Some(param) = sig.generics.params.iter().find(|p| !matches!(p, GenericParam::Lifetime(_))) {
        return Err(syn::Error::new(
            param.span(),
            "generic methods cannot be called through a trait object; use concrete types",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        _ => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "verdant interface methods take `&self`: loadables are stateless and shared by \
                 every concurrent caller",
            ))
        }
    }
    let mut types = Vec::new();
    for input in inputs {
        match input {
            FnArg::Typed(pat) => {
                if let syn::Type::ImplTrait(_) = *pat.ty {
                    return Err(syn::Error::new(pat.ty.span(), "`impl Trait` arguments are generic; use `&dyn Trait`"));
                }
                types.push((*pat.ty).clone());
            }
            FnArg::Receiver(r) => return Err(syn::Error::new(r.span(), "unexpected second receiver")),
        }
    }
    check_output(&sig.output)?;
    Ok(types)
}

/// Refuses a return type that would hand the host library code no guard
/// covers: a trait object, `impl Trait`, a boxed future or stream, a
/// function pointer (their code is the library's, and a panic in it aborts
/// the host), or a borrow (it may point into the library's memory, which is
/// unmapped when the version is unloaded). What the macro cannot see (a type
/// alias, a struct holding a `Box<dyn Error>`) it cannot refuse; the docs of
/// `verdant_loadable::interface` say so.
fn check_output(output: &ReturnType) -> syn::Result<()> {
    let ReturnType::Type(_, ty) = output else { return Ok(()) };
    if is_router(ty) {
        // The one trait-object-laden type that may cross: Verdant wraps it.
        return Ok(());
    }
    let mut check = Unguarded { found: None };
    check.visit_type_mut(&mut (**ty).clone());
    check.found.map_or(Ok(()), Err)
}

/// Finds the first part of a return type that [`check_output`] refuses.
struct Unguarded {
    found: Option<syn::Error>,
}

impl VisitMut for Unguarded {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if self.found.is_some() {
            return;
        }
        match unguarded(ty) {
            // `new_spanned`: underlines the whole type, not its first token.
            Some(message) => self.found = Some(syn::Error::new_spanned(&*ty, message)),
            None => visit_mut::visit_type_mut(self, ty),
        }
    }

    fn visit_lifetime_mut(&mut self, lifetime: &mut Lifetime) {
        if self.found.is_none() {
            self.found = Some(syn::Error::new_spanned(&*lifetime, borrowed(&lifetime.to_string())));
        }
    }
}

/// Why `ty` itself (not its parts) may not be returned, and what to return
/// instead.
fn unguarded(ty: &Type) -> Option<String> {
    let name = display(ty);
    match ty {
        Type::Reference(_) | Type::Ptr(_) => Some(borrowed(&name)),
        Type::TraitObject(object) => {
            let traits: Vec<String> = object
                .bounds
                .iter()
                .filter_map(|bound| match bound {
                    TypeParamBound::Trait(t) => t.path.segments.last().map(|s| s.ident.to_string()),
                    _ => None,
                })
                .collect();
            let is = |name: &str| traits.iter().any(|t| t == name);
            Some(if is("Future") {
                future(&name)
            } else if is("Error") {
                error(&name)
            } else if is("Stream") {
                stream(&name)
            } else {
                format!(
                    "`{name}`: a trait object made by the library has a vtable into library code that no \
                     guard covers (a panic there aborts the host), and it may outlive the library. \
                     Return owned data instead; for behaviour, add a method to the interface"
                )
            })
        }
        Type::ImplTrait(_) => Some(format!(
            "`{name}`: an `impl Trait` return type cannot be called through a trait object. Return a \
             concrete type that owns its data; for a future, declare the method `async fn`"
        )),
        Type::BareFn(_) => Some(format!(
            "`{name}`: a function pointer made by the library points into library code: calling it \
             runs no guard, and it dangles once the library is unloaded. Return data that says what \
             to do, or add a method to the interface that does it"
        )),
        Type::Path(path) => {
            let segments = &path.path.segments;
            let last = segments.last()?.ident.to_string();
            let first = segments.first()?.ident.to_string();
            if last == "BoxFuture" || last == "LocalBoxFuture" {
                Some(future(&name))
            } else if last == "BoxStream" || last == "LocalBoxStream" {
                Some(stream(&name))
            } else if first == "anyhow" || first == "eyre" {
                Some(error(&name))
            } else if segments.iter().any(|segment| match &segment.arguments {
                PathArguments::AngleBracketed(args) => {
                    args.args.iter().any(|arg| matches!(arg, GenericArgument::Lifetime(_)))
                }
                _ => false,
            }) {
                Some(borrowed(&name))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn future(name: &str) -> String {
    format!(
        "`{name}`: a future made by the library runs library code in every poll and in its `Drop` \
         that no guard covers (a panic there aborts the host), and it may outlive the library. \
         Declare the method `async fn` and return the output instead: Verdant creates, polls and \
         drops that future under the guard"
    )
}

fn stream(name: &str) -> String {
    format!(
        "`{name}`: a stream made by the library runs library code in every poll and in its `Drop` \
         that no guard covers (a panic there aborts the host), and it may outlive the library. \
         Return the items as owned data (a `Vec`), or stream them in a response body of a router \
         (`-> axum::Router` as the whole return type), which Verdant guards"
    )
}

fn error(name: &str) -> String {
    format!(
        "`{name}`: an error trait object made by the library runs library code in its `Display`, \
         `source` and `Drop` that no guard covers, and it may outlive the library. Return an error \
         enum of the interface crate instead (owned data), with a `#[from] \
         verdant_loadable::Panicked` variant to receive library panics"
    )
}

fn borrowed(name: &str) -> String {
    format!(
        "`{name}`: a borrow or pointer returned by the library may point into the library's memory, which is \
         unmapped when its version is unloaded (`'static` there means as long as the library, not \
         the host). Return owned data instead (`String` for `&str`, `Vec<T>` for `&[T]`)"
    )
}

/// `ty` as its source would spell it, roughly (`Box<dyn Error>`, not
/// `Box < dyn Error >`), for error messages.
fn display(ty: &Type) -> String {
    let text = quote!(#ty).to_string();
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.get(i + 1).copied();
            let glued_to_prev = matches!(prev, Some('<' | '&' | '(' | '[' | ':' | '*' | '\''));
            let glued_to_next = matches!(next, Some('<' | '>' | ',' | ')' | ']' | ':' | ';'))
                || (next == Some('(') && prev.is_some_and(|p| p.is_alphanumeric()));
            if glued_to_prev || glued_to_next {
                continue;
            }
        }
        out.push(c);
    }
    out
}
