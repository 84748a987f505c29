//! Passing fds over Unix sockets, for the tests of reads that stop at such a message.

/// Sends one byte and one fd (`fd` itself) over the Unix socket `fd` (`sendmsg` with
/// `SCM_RIGHTS`): the receiver's stream read stops after this message.
pub fn send_byte_with_fd(fd: std::os::fd::RawFd, byte: u8) {
    // SAFETY: sendmsg(2) of one byte and one fd from buffers that live through the call, on
    // the caller's open socket; the control buffer is u64-aligned and large enough for one
    // `SCM_RIGHTS` message of one fd.
    unsafe {
        let mut data = [byte];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut cbuf = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as _;
        *(libc::CMSG_DATA(c) as *mut i32) = fd;
        assert_eq!(libc::sendmsg(fd, &msg, 0), 1, "sendmsg with an fd");
    }
}
