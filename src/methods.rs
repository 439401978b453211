//! The Ruby methods the save path calls, interned once. A name given as `&str` is
//! interned again on every call (`rb_intern3`, about 650 instructions): eight times per
//! mirrored save before these (issue 13).

use magnus::rb_sys::AsRawId;
use magnus::value::LazyId;
use magnus::Ruby;
use rb_sys::VALUE;

pub static TO_S: LazyId = LazyId::new("to_s");
pub static TO_I: LazyId = LazyId::new("to_i");
pub static USEC: LazyId = LazyId::new("usec");
pub static ID: LazyId = LazyId::new("id");
pub static UPDATED_AT: LazyId = LazyId::new("updated_at");
pub static VALID_TIME: LazyId = LazyId::new("valid_time");
pub static DUP: LazyId = LazyId::new("dup");
pub static RESPOND_TO: LazyId = LazyId::new("respond_to?");

/// Whether `class#name` is still Ruby's own definition (nothing redefined or prepended
/// it), so the native code may work out its answer without calling it.
pub fn ruby_own(ruby: &Ruby, class: VALUE, name: &LazyId) -> bool {
    let id = LazyId::get_inner_with(name, ruby).as_raw();
    // SAFETY: the GVL is held; `class` is one of Ruby's core classes.
    unsafe { rb_sys::rb_method_basic_definition_p(class, id) != 0 }
}
