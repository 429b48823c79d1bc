// A game client on UdpDirector.cs: query -> token -> session -> reset -> resume.
//   mono example.exe play QUERY_ADDR DATA_ADDR MAGIC_HEX   against a director with that
//                     controlPacketMagicBytes whose mapping `echo` has zone=z0 and zone=z1 echo servers
//   mono example.exe query-line RESOURCE TICKET EXPECTED_LINE   (conformance vectors)
// Run by capi/tests/csharp.rs.
using System;
using System.Text;
using UdpDirector;

static class Example
{
    static string Exchange(Session s, string payload, string prefix)
    {
        var data = Encoding.UTF8.GetBytes(payload);
        var buf = new byte[65536];
        for (var i = 0; i < 50; i++)
        {
            s.Send(data);
            var n = s.Receive(buf, 100);
            if (n >= 0)
            {
                var reply = Encoding.UTF8.GetString(buf, 0, n);
                if (reply.StartsWith(prefix, StringComparison.Ordinal)) return reply;
            }
            s.Tick();
        }
        throw new Exception("no reply starting with " + prefix + " to " + payload);
    }

    static byte[] Unhex(string hex)
    {
        var b = new byte[hex.Length / 2];
        for (var i = 0; i < b.Length; i++) b[i] = Convert.ToByte(hex.Substring(2 * i, 2), 16);
        return b;
    }

    static int Play(string queryAddr, string dataAddr, byte[] magic)
    {
        Console.WriteLine("udp_director " + Library.Version);
        try
        {
            using (var q = new Query("no-such-type")) q.Send(queryAddr);
            Console.Error.WriteLine("a query for an unknown type was answered");
            return 1;
        }
        catch (UdpDirectorException e)
        {
            if (e.Status != Status.Refused || e.Code != "unknown_resource_type") throw;
            Console.WriteLine("refused " + e.Code);
        }

        using (var first = new Query("echo").Label("zone", "z0").Send(queryAddr))
        using (var second = new Query("echo").Label("zone", "z1").Send(queryAddr))
        using (var session = new Session(first, new SessionOptions { Magic = magic, SilenceMs = 300 }, dataAddr))
        {
            Console.WriteLine("token " + first.Token + " for " + first.TargetNamespace + "/" + first.TargetName + " ttl " + first.TtlSeconds);
            Console.WriteLine("reply " + Exchange(session, "cs:hello-a", "a:"));
            session.Switch(second);
            Console.WriteLine("reply " + Exchange(session, "cs:hello-b", "b:"));
            var buf = new byte[2048];
            var resumed = false;
            for (var i = 0; i < 40 && !resumed; i++)
            {
                session.Receive(buf, 50);
                resumed = session.Tick();
            }
            if (!resumed) throw new Exception("the resume rule never fired");
            Console.WriteLine("reply " + Exchange(session, "cs:after-resume", "b:"));
            Console.WriteLine("remote " + session.Remote + " resumes " + session.Stats.Resumes);
        }
        Console.WriteLine("done");
        return 0;
    }

    static int Main(string[] args)
    {
        if (args.Length == 4 && args[0] == "play") return Play(args[1], args[2], Unhex(args[3]));
        if (args.Length == 4 && args[0] == "query-line")
        {
            using (var q = new Query(args[1]).Ticket(args[2]))
            {
                if (q.Line != args[3])
                {
                    Console.Error.WriteLine("line " + q.Line + " != " + args[3]);
                    return 1;
                }
                Console.WriteLine("query-line ok");
                return 0;
            }
        }
        Console.Error.WriteLine("usage: play QUERY DATA MAGIC | query-line RESOURCE TICKET LINE");
        return 2;
    }
}
