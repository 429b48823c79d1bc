// udp-director client for C# (.NET, Mono, Unity): P/Invoke over the C library
// (libudp_director.so / udp_director.dll / libudp_director.dylib, see capi/) and a small
// idiomatic wrapper: Query -> Grant -> Session, IDisposable handles, exceptions with the
// director's error code. One file: copy it into your project next to the native library.
//
// Ownership: every native handle lives in a SafeHandle and is freed exactly once (Dispose
// or finalizer). Strings cross as NUL-terminated UTF-8 copies; buffers are pinned for the
// call only. Protocol and rules: Docs/Clients.md.
using System;
using System.Runtime.InteropServices;
using System.Text;

namespace UdpDirector
{
    /// <summary>What a native call did (UdStatus in udp_director.h).</summary>
    public enum Status
    {
        Ok = 0,
        InvalidArgument = 1,
        Io = 2,
        Refused = 3,
        Garbled = 4,
        Timeout = 5,
        BufferTooSmall = 6,
        Panic = 7,
    }

    /// <summary>Counters of a session (UdStats).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Stats
    {
        public ulong Resumes;
        public ulong Failovers;
        public ulong ChallengesAnswered;
        public ulong Pongs;
        public ulong Dropped;
    }

    /// <summary>An IP address and port (UdAddr: family 4 or 6, port, 16 address bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct Addr
    {
        public byte Family;
        public ushort Port;
        [MarshalAs(UnmanagedType.ByValArray, SizeConst = 16)]
        public byte[] Ip;

        public override string ToString()
        {
            var buf = new byte[64];
            var me = this;
            var n = (int)Native.ud_addr_format(ref me, buf, (UIntPtr)buf.Length);
            return n == 0 ? "" : Native.FromUtf8(buf, n - 1);
        }
    }

    /// <summary>How a session behaves (UdConfig); null fields keep the defaults.</summary>
    public sealed class SessionOptions
    {
        /// <summary>The director's controlPacketMagicBytes (1..=32 bytes); default FF FF FF FF "RESET".</summary>
        public byte[] Magic;
        /// <summary>Resume after this much silence (500).</summary>
        public uint? SilenceMs;
        /// <summary>Resume at least this often (5000).</summary>
        public uint? KeepaliveMs;
        /// <summary>With several director addresses: fail over after this much silence (3000).</summary>
        public uint? FailoverAfterMs;
        /// <summary>With several director addresses: wait this long for PONGs (500).</summary>
        public uint? ProbeForMs;
    }

    [StructLayout(LayoutKind.Sequential)]
    internal struct NativeConfig
    {
        public IntPtr Magic;
        public UIntPtr MagicLen;
        public uint SilenceMs;
        public uint KeepaliveMs;
        public uint FailoverAfterMs;
        public uint ProbeForMs;
        public ulong Seed;
    }

    /// <summary>A failed call: the status and the library's message. For a refused query
    /// (Status.Refused), Code is the director's error code (no_match, unauthorized, ...).</summary>
    public class UdpDirectorException : Exception
    {
        public Status Status { get; private set; }
        public string Code { get; private set; }

        public UdpDirectorException(Status status, string message) : base(message)
        {
            Status = status;
            var colon = message.IndexOf(':');
            Code = status == Status.Refused && colon > 0 ? message.Substring(0, colon) : null;
        }
    }

    internal static class Native
    {
        const string Lib = "udp_director";

        [DllImport(Lib)] internal static extern IntPtr ud_version();
        [DllImport(Lib)] internal static extern UIntPtr ud_last_error_message(byte[] buf, UIntPtr cap);
        [DllImport(Lib)] internal static extern UIntPtr ud_addr_format(ref Addr addr, byte[] buf, UIntPtr cap);

        [DllImport(Lib)] internal static extern Status ud_query_new(byte[] resourceType, out QueryHandle query);
        [DllImport(Lib)] internal static extern void ud_query_free(IntPtr query);
        [DllImport(Lib)] internal static extern Status ud_query_namespace(QueryHandle query, byte[] ns);
        [DllImport(Lib)] internal static extern Status ud_query_label(QueryHandle query, byte[] key, byte[] value);
        [DllImport(Lib)] internal static extern Status ud_query_annotation(QueryHandle query, byte[] key, byte[] value);
        [DllImport(Lib)] internal static extern Status ud_query_player_id(QueryHandle query, byte[] id);
        [DllImport(Lib)] internal static extern Status ud_query_ticket(QueryHandle query, byte[] ticket);
        [DllImport(Lib)] internal static extern UIntPtr ud_query_line(QueryHandle query, byte[] buf, UIntPtr cap);
        [DllImport(Lib)] internal static extern Status ud_query_send(QueryHandle query, byte[] queryAddr, out GrantHandle grant);

        [DllImport(Lib)] internal static extern Status ud_grant_parse(byte[] line, out GrantHandle grant);
        [DllImport(Lib)] internal static extern void ud_grant_free(IntPtr grant);
        [DllImport(Lib)] internal static extern IntPtr ud_grant_token(GrantHandle grant);
        [DllImport(Lib)] internal static extern IntPtr ud_grant_target_namespace(GrantHandle grant);
        [DllImport(Lib)] internal static extern IntPtr ud_grant_target_name(GrantHandle grant);
        [DllImport(Lib)] internal static extern ulong ud_grant_ttl_seconds(GrantHandle grant);
        [DllImport(Lib)] internal static extern ulong ud_grant_resume_seconds(GrantHandle grant);

        // C `const char *const *` and `bool` (one byte): marshalled explicitly.
        [DllImport(Lib)] internal static extern Status ud_session_open(IntPtr[] directors, UIntPtr n, GrantHandle grant, IntPtr config, out SessionHandle session);
        [DllImport(Lib, EntryPoint = "ud_session_open")] internal static extern Status ud_session_open_with(IntPtr[] directors, UIntPtr n, GrantHandle grant, ref NativeConfig config, out SessionHandle session);
        [DllImport(Lib)] internal static extern Status ud_config_default(out NativeConfig config);
        [DllImport(Lib)] internal static extern void ud_session_free(IntPtr session);
        [DllImport(Lib)] internal static extern Status ud_session_send(SessionHandle session, byte[] data, UIntPtr len);
        [DllImport(Lib)] internal static extern Status ud_session_recv(SessionHandle session, byte[] buf, UIntPtr cap, uint timeoutMs, out UIntPtr len);
        [DllImport(Lib)] internal static extern Status ud_session_tick(SessionHandle session, [MarshalAs(UnmanagedType.U1)] out bool resumed);
        [DllImport(Lib)] internal static extern Status ud_session_switch(SessionHandle session, GrantHandle grant);
        [DllImport(Lib)] internal static extern Status ud_session_ping(SessionHandle session);
        [DllImport(Lib)] internal static extern Status ud_session_remote(SessionHandle session, out Addr addr);
        [DllImport(Lib)] internal static extern Status ud_session_stats(SessionHandle session, out Stats stats);
        [DllImport(Lib)] internal static extern Status ud_session_needs_query(SessionHandle session, [MarshalAs(UnmanagedType.U1)] out bool needs);

        internal static byte[] Utf8(string s)
        {
            if (s == null) throw new ArgumentNullException();
            var bytes = Encoding.UTF8.GetBytes(s);
            var z = new byte[bytes.Length + 1];
            Buffer.BlockCopy(bytes, 0, z, 0, bytes.Length);
            return z;
        }

        internal static string FromUtf8(byte[] buf, int len)
        {
            return Encoding.UTF8.GetString(buf, 0, Math.Max(0, Math.Min(len, buf.Length)));
        }

        /// <summary>A NUL-terminated UTF-8 string owned by the library (not freed here).</summary>
        internal static string FromUtf8(IntPtr p)
        {
            if (p == IntPtr.Zero) return null;
            var len = 0;
            while (Marshal.ReadByte(p, len) != 0) len++;
            var bytes = new byte[len];
            Marshal.Copy(p, bytes, 0, len);
            return Encoding.UTF8.GetString(bytes);
        }

        internal static string LastError()
        {
            var needed = (int)ud_last_error_message(null, UIntPtr.Zero);
            var buf = new byte[Math.Max(needed, 1)];
            ud_last_error_message(buf, (UIntPtr)buf.Length);
            return FromUtf8(buf, needed - 1);
        }

        internal static void Check(Status s)
        {
            if (s != Status.Ok) throw new UdpDirectorException(s, LastError());
        }
    }

    internal sealed class QueryHandle : SafeHandle
    {
        QueryHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle() { Native.ud_query_free(handle); return true; }
    }

    internal sealed class GrantHandle : SafeHandle
    {
        GrantHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle() { Native.ud_grant_free(handle); return true; }
    }

    internal sealed class SessionHandle : SafeHandle
    {
        SessionHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle() { Native.ud_session_free(handle); return true; }
    }

    /// <summary>The library's version ("0.1.0").</summary>
    public static class Library
    {
        public static string Version { get { return Native.FromUtf8(Native.ud_version()); } }
    }

    /// <summary>A query (SPEC §2), built fluently and sent to a director's query port.</summary>
    public sealed class Query : IDisposable
    {
        readonly QueryHandle h;

        public Query(string resourceType)
        {
            Native.Check(Native.ud_query_new(Native.Utf8(resourceType), out h));
        }

        public Query Namespace(string ns) { Native.Check(Native.ud_query_namespace(h, Native.Utf8(ns))); return this; }
        public Query Label(string key, string value) { Native.Check(Native.ud_query_label(h, Native.Utf8(key), Native.Utf8(value))); return this; }
        public Query Annotation(string key, string value) { Native.Check(Native.ud_query_annotation(h, Native.Utf8(key), Native.Utf8(value))); return this; }
        public Query PlayerId(string id) { Native.Check(Native.ud_query_player_id(h, Native.Utf8(id))); return this; }
        /// <summary>The player's ticket (a JWT from your backend), passed through unread.</summary>
        public Query Ticket(string jwt) { Native.Check(Native.ud_query_ticket(h, Native.Utf8(jwt))); return this; }

        /// <summary>The JSON request line this query sends.</summary>
        public string Line
        {
            get
            {
                var needed = (int)Native.ud_query_line(h, null, UIntPtr.Zero);
                var buf = new byte[needed];
                Native.ud_query_line(h, buf, (UIntPtr)buf.Length);
                return Native.FromUtf8(buf, needed - 1);
            }
        }

        /// <summary>Sends it to "ip:port" and waits for the answer (blocking, up to 5 s).
        /// Throws UdpDirectorException (Code = the director's error code) when refused.</summary>
        public Grant Send(string queryAddr)
        {
            GrantHandle g;
            Native.Check(Native.ud_query_send(h, Native.Utf8(queryAddr), out g));
            return new Grant(g);
        }

        public void Dispose() { h.Dispose(); }
    }

    /// <summary>A query's answer: the token and what it opens.</summary>
    public sealed class Grant : IDisposable
    {
        internal readonly GrantHandle Handle;

        internal Grant(GrantHandle h) { Handle = h; }

        /// <summary>Reads an answer line (when you do the TCP yourself).</summary>
        public static Grant Parse(string line)
        {
            GrantHandle g;
            Native.Check(Native.ud_grant_parse(Native.Utf8(line), out g));
            return new Grant(g);
        }

        public string Token { get { return Native.FromUtf8(Native.ud_grant_token(Handle)); } }
        public string TargetNamespace { get { return Native.FromUtf8(Native.ud_grant_target_namespace(Handle)); } }
        public string TargetName { get { return Native.FromUtf8(Native.ud_grant_target_name(Handle)); } }
        public ulong TtlSeconds { get { return Native.ud_grant_ttl_seconds(Handle); } }
        /// <summary>Sealed tokens: how long [magic][token] re-opens the session on any replica; 0 if none.</summary>
        public ulong ResumeSeconds { get { return Native.ud_grant_resume_seconds(Handle); } }

        public void Dispose() { Handle.Dispose(); }
    }

    /// <summary>A UDP session through the director, owning its socket. Call Tick() every
    /// frame: it applies the resume rule (after 500 ms of silence, and every 5 s) and the
    /// failover between several director addresses.</summary>
    public sealed class Session : IDisposable
    {
        readonly SessionHandle h;

        /// <summary>Opens a session with the grant through the nearest of the director data
        /// addresses ("ip:port"); the grant stays yours.</summary>
        public Session(Grant grant, params string[] directors) : this(grant, null, directors) { }

        /// <summary>The same with options (a custom magic, other timings).</summary>
        public Session(Grant grant, SessionOptions options, params string[] directors)
        {
            if (directors == null || directors.Length == 0) throw new ArgumentException("no director address");
            var ptrs = new IntPtr[directors.Length];
            var magic = default(GCHandle);
            try
            {
                for (var i = 0; i < directors.Length; i++)
                {
                    var bytes = Native.Utf8(directors[i]);
                    ptrs[i] = Marshal.AllocHGlobal(bytes.Length);
                    Marshal.Copy(bytes, 0, ptrs[i], bytes.Length);
                }
                if (options == null)
                {
                    Native.Check(Native.ud_session_open(ptrs, (UIntPtr)ptrs.Length, grant.Handle, IntPtr.Zero, out h));
                    return;
                }
                NativeConfig cfg;
                Native.Check(Native.ud_config_default(out cfg));
                if (options.Magic != null)
                {
                    // Pinned for the call only: the library copies the magic.
                    magic = GCHandle.Alloc(options.Magic, GCHandleType.Pinned);
                    cfg.Magic = magic.AddrOfPinnedObject();
                    cfg.MagicLen = (UIntPtr)options.Magic.Length;
                }
                if (options.SilenceMs.HasValue) cfg.SilenceMs = options.SilenceMs.Value;
                if (options.KeepaliveMs.HasValue) cfg.KeepaliveMs = options.KeepaliveMs.Value;
                if (options.FailoverAfterMs.HasValue) cfg.FailoverAfterMs = options.FailoverAfterMs.Value;
                if (options.ProbeForMs.HasValue) cfg.ProbeForMs = options.ProbeForMs.Value;
                Native.Check(Native.ud_session_open_with(ptrs, (UIntPtr)ptrs.Length, grant.Handle, ref cfg, out h));
            }
            finally
            {
                if (magic.IsAllocated) magic.Free();
                foreach (var p in ptrs) if (p != IntPtr.Zero) Marshal.FreeHGlobal(p);
            }
        }

        public void Send(byte[] data) { Send(data, data.Length); }

        public void Send(byte[] data, int length)
        {
            if (length < 0 || length > data.Length) throw new ArgumentOutOfRangeException("length");
            Native.Check(Native.ud_session_send(h, data, (UIntPtr)length));
        }

        /// <summary>Waits up to timeoutMs for game data; its length, or -1 when none came.</summary>
        public int Receive(byte[] buffer, int timeoutMs)
        {
            UIntPtr n;
            var s = Native.ud_session_recv(h, buffer, (UIntPtr)buffer.Length, (uint)Math.Max(0, timeoutMs), out n);
            if (s == Status.Timeout) return -1;
            Native.Check(s);
            return (int)n;
        }

        /// <summary>The resume rule and failover; true when it sent [magic][token].</summary>
        public bool Tick()
        {
            bool resumed;
            Native.Check(Native.ud_session_tick(h, out resumed));
            return resumed;
        }

        /// <summary>Moves the session to the grant's server (same socket).</summary>
        public void Switch(Grant grant) { Native.Check(Native.ud_session_switch(h, grant.Handle)); }

        public void Ping() { Native.Check(Native.ud_session_ping(h)); }

        public Addr Remote { get { Addr a; Native.Check(Native.ud_session_remote(h, out a)); return a; } }

        public Stats Stats { get { Stats s; Native.Check(Native.ud_session_stats(h, out s)); return s; } }

        /// <summary>The token can no longer re-open the session: query again and Switch.</summary>
        public bool NeedsQuery { get { bool b; Native.Check(Native.ud_session_needs_query(h, out b)); return b; } }

        public void Dispose() { h.Dispose(); }
    }
}
